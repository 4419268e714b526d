"""A run from a config: :func:`train_and_evaluate` wires config → data → model → :func:`fit` with
hooks.

What ``python -m vggjax.train`` calls, and the function to call from Python for the same run.
Everything that can be checked is checked before anything is compiled or written: the config,
the batch split, the dataset, the model on the images' shape, ``init_from``, the workdir (write
probe and free space). Crash safety: a rerun resumes from the latest checkpoint bit-identically,
``metrics.jsonl`` records after the restored step are dropped, a damaged latest checkpoint is
skipped with a warning, SIGTERM checkpoints the step in flight, and no checkpoint of non-finite
values is ever written (the NaN check runs before every save).
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vggjax import optim, parallel
from vggjax.errors import VggjaxError
from vggjax.training import config as config_lib
from vggjax.training import hooks as hooks_lib
from vggjax.training.loop import fit
from vggjax.training.runner import enable_compilation_cache, evaluate, make_runner, trace_key
from vggjax.training.state import init_state, merge, nbytes
from vggjax.training.step import forward_order, leaf_names
from vggjax.training.workdir import check_workdir, rewind_metrics


def _preflight(config, workdir: str, plan: config_lib.Plan, eval_graphdef, make_state) -> Any:
    """Fail before any compilation, checkpoint or data work; returns the abstract state."""
    from vggjax import checkpoint

    abstract_state = jax.eval_shape(make_state)
    shape = (1, plan.image_size, plan.image_size, plan.channels)
    jax.eval_shape(
        lambda: merge(eval_graphdef, make_state())(jnp.zeros(shape))
    )  # the model takes the images
    if config.get("init_from") and not os.path.isdir(os.path.join(workdir, "checkpoints")):
        checkpoint.locate_init_from(config.init_from)  # a wrong path fails before anything is built
    # Last of the checks: a workdir we cannot write to (or a full disk) fails now, not
    # after the first checkpoint interval's worth of training.
    check_workdir(workdir, checkpoint_bytes=nbytes(abstract_state))
    return abstract_state


def _restore(config, ckpt, state, tx) -> tuple[Any, int]:
    """Resume from the newest good checkpoint, or start from ``config.init_from``'s weights, or as
    is."""
    from vggjax import checkpoint

    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)
        start = int(state.step)
        if ckpt.damaged_steps:
            print(
                f"warning: checkpoint step(s) {', '.join(map(str, ckpt.damaged_steps))} "
                f"in {ckpt.directory} could not be read (truncated or half-written); "
                f"resuming from step {start}, the newest good one",
                file=sys.stderr,
            )
        return state, start
    if config.get("init_from"):
        target = {"params": state.params, "frozen": state.frozen, "batch_stats": state.batch_stats}
        loaded, skipped = checkpoint.restore_params_from(config.init_from, target)
        state = state.replace(**loaded, opt_state=tx.init(loaded["params"]))
        for line in skipped:
            print(f"init_from: kept fresh {line}", file=sys.stderr)
    return state, 0


def _datasets(config, plan: config_lib.Plan, start: int):
    from vggjax import data

    train_iter, eval_batches, _ = data.get_datasets(
        config.dataset,
        global_batch_size=plan.batch_size,
        eval_batch_size=plan.eval_batch_size,
        image_size=plan.image_size,
        seed=config.seed,
        data_dir=config.get("data_dir") or None,
        start_step=start,
        augment=config.get("augment", "default"),
        normalize=config.get("normalize", "default"),
        channels=plan.channels,
        classes=plan.classes,
        download=config.get("download", True),
    )
    return train_iter, eval_batches


def _open_log(config, workdir: str, plan: config_lib.Plan, start: int):
    """The metrics writer; ``metrics.jsonl`` first rewound to the restored step (to nothing when
    no checkpoint was restored), so the file always reads as one run."""
    from vggjax import metrics as metrics_lib

    dropped = 0
    if jax.process_index() == 0:
        # A killed run may have logged steps after its last checkpoint (any step, if it had none
        # yet): they are trained again now, so drop them (and a finished run's summary) first.
        dropped = rewind_metrics(os.path.join(workdir, "metrics.jsonl"), start if start else -1)
    writer = metrics_lib.MetricsWriter(
        workdir, plan.total_steps, progress=config.get("progress", True), start_step=start
    )
    if start:
        writer.log(f"resumed from step {start} in {workdir}")
    else:
        if dropped:
            writer.log(
                f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: starting from step 0 "
                f"(the {dropped} records of the interrupted run are dropped)"
            )
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    return writer


def _check_trainability(
    config, plan: config_lib.Plan, graphdef, state, train_iter, start: int, writer
):
    """Before the first step, the trainability check on the first batch (warnings, ``finding``
    records); returns the batches (the first one put back), the first batch, the check's report
    (None when resuming) and the constant-prediction loss the watch compares with."""
    from vggjax import trainability

    first = next(train_iter)
    report = None
    if start == 0:
        report = trainability.check(
            merge(graphdef, state), first, plan.loss, plan.num_classes, setup=_setup(config, plan)
        )
        if writer.active:
            trainability.warn(report.findings, writer, 0)
    constant = trainability.constant_loss(plan.loss, plan.num_classes, first["label"])
    return itertools.chain([first], train_iter), first, report, constant


def _setup(config, plan: config_lib.Plan):
    from vggjax import trainability

    return trainability.Setup(float(config.optim.learning_rate), plan.batch_size)


def _watch(config, plan, workdir, graphdef, runner, first, before, constant, start, writer):
    """The while-training watch; at a plateau it checks the network as trained so far on the
    first batch, against the check at step 0."""
    from vggjax import trainability

    def recheck(state):
        model = merge(graphdef, runner.to_host_state(state))
        return trainability.check(
            model,
            first,
            plan.loss,
            plan.num_classes,
            before=before,
            setup=_setup(config, plan),
            trained=True,
        ).findings

    return hooks_lib.Trainability(
        constant,
        writer,
        start_step=start,
        recheck=recheck,
        workdir=workdir,
        plateau_from=optim.warmup_steps(config.optim, plan.steps_per_epoch),
    )


def _finish(
    config, workdir, plan, result, ckpt, writer, runner, evaluator, seconds, timings
) -> dict[str, Any]:
    """After the loop: wait for the checkpoint, then the preempted answer or the final evaluation
    and summary."""
    from vggjax import metrics as metrics_lib

    if result.skipped:
        writer.log(
            f"skipped {len(result.skipped)} step(s) with non-finite values (nan_policy=skip): "
            f"first {result.skipped[0]}, last {result.skipped[-1]}"
        )
    # a preempted run's checkpoint must be on disk before the scheduler takes the machine
    ckpt.wait()
    if result.stopped:
        what = (
            "interrupted (Ctrl-C)"
            if result.stopped == "SIGINT"
            else f"preempted ({result.stopped})"
        )
        writer.log(
            f"{what} at step {result.step}/{plan.total_steps}: "
            f"checkpoint saved in {ckpt.directory}/{result.step}; rerun the same command to resume"
        )
        return {
            "preempted": True,
            "signal": result.stopped,
            "steps": result.step,
            "workdir": workdir,
        }
    last = evaluator.last or evaluate(runner, result.state, evaluator.eval_batches)
    spent = {f"{k}_seconds": round(v, 1) for k, v in sorted(timings.seconds.items())}
    summary = {
        **last,
        "steps": plan.total_steps,
        "seconds": round(seconds, 1),
        **spent,
        "peak_rss_mib": round(metrics_lib.peak_rss_mib()),
        "workdir": workdir,
    }
    writer.write(plan.total_steps, "summary", summary)
    if writer.active and os.path.exists(writer.path):
        metrics_lib.plot_curves(writer.path, os.path.join(workdir, "curves.png"))
    writer.log(
        f"done: {config.model} on {config.dataset}: test accuracy {last['accuracy']:.4f} "
        f"(loss {last['loss']:.4f}, {last['examples']} examples) after {plan.total_steps} steps "
        f"in {seconds:.0f} s; results in {workdir}"
    )
    writer.log(
        "time: "
        + ", ".join(
            f"{k.replace('_seconds', '')} {v:.0f} s ({v / max(seconds, 1e-9):.0%})"
            for k, v in spent.items()
        )
        + f" of {seconds:.0f} s; peak RSS {summary['peak_rss_mib']} MiB"
    )
    return summary


def _train(
    config, workdir, plan, tx, graphdef, eval_graphdef, state, start, ckpt, abstract_state, writer
):
    """Compile the steps, open the data and run :func:`fit` with the trainer's hooks."""
    from vggjax import metrics as metrics_lib

    key = trace_key(
        config,
        loss=plan.loss,
        num_classes=plan.num_classes,
        channels=plan.channels,
        image_size=plan.image_size,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
    )
    train_iter, eval_batches = _datasets(config, plan, start)
    check = config.get("check_trainability", True)
    if check:
        train_iter, first, before, constant = _check_trainability(
            config, plan, graphdef, state, train_iter, start, writer
        )
    runner, state = make_runner(config, graphdef, eval_graphdef, tx, plan.loss, state, False, key)
    watch = []
    if check:
        watch = [
            _watch(config, plan, workdir, graphdef, runner, first, before, constant, start, writer)
        ]
    diag = config.get("diagnostics", {})
    diag_runner = None
    if diag.get("enabled", False):
        diag_runner = make_runner(
            config, graphdef, eval_graphdef, tx, plan.loss, runner.to_host_state(state), True, key
        )[0]
    timings = metrics_lib.Timings()
    evaluator = hooks_lib.Evaluate(
        runner, eval_batches, plan.eval_every, writer, config.optim, timings
    )
    trainer_hooks = [
        hooks_lib.Preempt(ckpt, exit_on_second_interrupt=True),
        hooks_lib.MetricsLog(writer, plan.batch_size, metrics_lib.Throughput()),
        *watch,
        evaluator,
        hooks_lib.Checkpoint(ckpt, runner.to_host_state, {"model": config.model}, timings),
    ]
    image = (1, plan.image_size, plan.image_size, plan.channels)

    @functools.cache
    def forward_names() -> list[str]:  # parameter names in the network's order, for a NaN report
        names = leaf_names(abstract_state.params)
        return [names[i] for i in forward_order(graphdef, abstract_state, image)]

    t0 = time.perf_counter()
    result = fit(
        state,
        runner.train_step,
        timings.iterate(
            "input", parallel.prefetch((runner.put_batch(b) for b in train_iter), lambda b: b, 2)
        ),
        total_steps=plan.total_steps,
        start_step=start,
        log_every=max(1, config.log_every_steps),
        hooks=trainer_hooks,
        nan_policy=config.get("nan_policy", "stop"),
        fetch=runner.fetch,
        diagnostics_step=diag_runner.train_step if diag_runner else None,
        diagnostics_every=int(diag.get("every_steps", 100) or 100),
        parameter_names=forward_names,
    )
    return _finish(
        config,
        workdir,
        plan,
        result,
        ckpt,
        writer,
        runner,
        evaluator,
        time.perf_counter() - t0,
        timings,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluate.

    Returns the final evaluation metrics plus ``steps``, ``seconds`` and ``workdir``; or,
    when SIGTERM arrived (preemption), ``{"preempted": True, "steps": N, "workdir": ...}``
    after step N was checkpointed (rerunning resumes there). User mistakes raise one-line
    :class:`~vggjax.errors.VggjaxError`\\ s before anything is compiled or written.
    """
    from vggjax import checkpoint, data

    config_lib.check_config(config)
    enable_compilation_cache(config.get("compilation_cache", ""))
    config_lib.check_batches(config)
    classes = tuple(config.get("classes", ()) or ()) or None
    info = data.get_info(
        config.dataset,
        config.get("data_dir") or None,
        classes=classes,
        download=config.get("download", True),
    )
    plan = config_lib.plan(config, info)
    tx = optim.make_optimizer(
        config.optim, steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps
    )
    graphdef, eval_graphdef, make_state = init_state(config, plan.num_classes, plan.channels, tx)
    abstract_state = _preflight(config, workdir, plan, eval_graphdef, make_state)
    state = jax.jit(make_state)()
    ckpt = checkpoint.Checkpointer(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        max_to_keep=config.get("keep_checkpoints", 3),
        save_interval_steps=max(1, config.get("checkpoint_every_steps", 0) or plan.total_steps),
    )
    writer, failed = None, False
    try:
        state, start = _restore(config, ckpt, state, tx)
        writer = _open_log(config, workdir, plan, start)
        return _train(
            config,
            workdir,
            plan,
            tx,
            graphdef,
            eval_graphdef,
            state,
            start,
            ckpt,
            abstract_state,
            writer,
        )
    except BaseException:
        failed = True
        raise
    finally:
        if writer is not None:
            writer.close()
        try:
            ckpt.close()
        except VggjaxError:
            if not failed:  # a failed final write is the error to report; never mask an earlier one
                raise
