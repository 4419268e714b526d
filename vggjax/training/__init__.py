"""Training, in three layers with one direction of imports:

* the pure steps and the state — :mod:`.state` (``TrainState``, ``init_state``,
  ``state_from_model``) and :mod:`.step` (``make_train_step``, ``make_eval_step``);
* the reusable loop — :mod:`.loop` (``fit`` and ``Hook``), :mod:`.hooks` (metrics, evaluation,
  checkpoints, preemption, history), :mod:`.runner` (the compiled steps per parallel mode);
* a run from a config — :mod:`.run` (``train_and_evaluate``: config → data → model → ``fit``),
  with :mod:`.config` (checks, derived sizes) and :mod:`.workdir`; the command line on top of it
  is :mod:`vggjax.train`.

Use your own model and batches::

    from vggjax.training import fit, hooks, make_train_step, state_from_model

    graphdef, eval_graphdef, state = state_from_model(model, tx)
    step = jax.jit(make_train_step(graphdef, tx, "softmax_cross_entropy"), donate_argnums=0)
    history = hooks.History()
    result = fit(state, step, batches, total_steps=1000, hooks=[history])
"""

from vggjax.training import hooks
from vggjax.training.loop import FitResult, Hook, Loop, Record, fit
from vggjax.training.run import train_and_evaluate
from vggjax.training.runner import Runner, enable_compilation_cache, evaluate, make_runner
from vggjax.training.state import (
    TrainState,
    create_model,
    init_state,
    merge,
    split_model,
    state_from_model,
)
from vggjax.training.step import (
    describe_nonfinite,
    forward_order,
    leaf_names,
    loss_and_metrics,
    make_eval_step,
    make_train_step,
)
from vggjax.training.workdir import check_workdir, default_workdir, rewind_metrics

__all__ = [
    "FitResult",
    "Hook",
    "Loop",
    "Record",
    "Runner",
    "TrainState",
    "check_workdir",
    "create_model",
    "default_workdir",
    "describe_nonfinite",
    "enable_compilation_cache",
    "evaluate",
    "fit",
    "forward_order",
    "hooks",
    "init_state",
    "leaf_names",
    "loss_and_metrics",
    "make_eval_step",
    "make_runner",
    "make_train_step",
    "merge",
    "rewind_metrics",
    "split_model",
    "state_from_model",
    "train_and_evaluate",
]
