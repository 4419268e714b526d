"""The compiled steps for one parallel mode, and how to feed them: the trainer's data parallelism.

* ``config.parallel = "jit"`` (default): one global batch sharded ``P("data")`` over a 1-D device
  mesh, the state replicated, one ``jax.jit`` step (saved with ``jax.export`` next to the
  compilation cache, :mod:`vggjax.stepcache`, so a warm start skips tracing);
* ``"pmap"``: the very same pure step under ``jax.pmap``, gradients and metrics averaged with
  ``lax.pmean`` and BatchNorm statistics over the device axis.

:func:`pure_steps` and :func:`mesh_jit_options` are what :func:`make_runner` jits, and what
``vggjax.bench.exports`` exports for other platforms.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
from flax import nnx

from vggjax import ops, parallel, stepcache
from vggjax.training.state import TrainState, merge, split_model
from vggjax.training.step import make_eval_step, make_train_step


@dataclasses.dataclass
class Runner:
    """The compiled steps and how to feed them for one parallel mode."""

    train_step: Callable
    eval_step: Callable
    put_batch: Callable[[dict], Any]
    fetch: Callable[[Any], Any]  # device metrics -> host numpy (device 0 copy under pmap)
    to_host_state: Callable[[TrainState], TrainState]
    from_host_state: Callable[[TrainState], TrainState]
    num_devices: int


def enable_compilation_cache(path: str | None) -> None:
    """Turn on JAX's persistent compilation cache at ``path`` (a second run does not recompile)."""
    if not path:
        return
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # an unwritable cache must never stop training
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def trace_key(config, **sizes: Any) -> str:
    """Everything besides the arguments and the source that decides the steps' trace: the whole
    config (its compute policy included) and the sizes derived from the data (classes, image size,
    schedule)."""
    return json.dumps({"config": config.to_dict(), **sizes}, sort_keys=True, default=repr)


def with_batchnorm_axis(graphdef: nnx.GraphDef, state: TrainState, axis_name: str) -> nnx.GraphDef:
    """``graphdef`` with every BatchNorm averaging its batch statistics over ``axis_name``.

    ``state`` may be abstract (``jax.eval_shape``): only the graph is rebuilt.
    """
    model = merge(graphdef, state)
    parallel.set_batchnorm_axis(model, axis_name)
    return split_model(model)[0]


def pure_steps(
    config, graphdef, eval_graphdef, tx, loss_name: str, state: TrainState, with_diag: bool = False
) -> tuple[Callable, Callable]:
    """``(train_step, eval_step)`` of ``config.parallel``'s mode, before ``jax.jit`` / ``jax.pmap``.

    Under pmap each device sees only its slice of the batch, so BatchNorm must pmean its
    batch statistics over the devices to match mesh-jit (where the batch is one global
    array); the axis name is a static attribute, so it lives in the graphdef.
    """
    axis = parallel.AXIS if config.parallel == "pmap" else None
    if axis is not None:
        graphdef = with_batchnorm_axis(graphdef, state, axis)
    step = make_train_step(
        graphdef,
        tx,
        loss_name,
        axis_name=axis,
        with_diagnostics=with_diag,
        skip_nonfinite=config.get("nan_policy", "stop") == "skip",
        compute=ops.Policy.parse(config.get("compute", "auto")),
    )
    return step, make_eval_step(eval_graphdef, loss_name, axis_name=axis)


def mesh_jit_options(state: TrainState, mesh) -> tuple[dict[str, Any], dict[str, Any]]:
    """``jax.jit`` keyword options of the mesh-jit train and eval steps: replicated state,
    ``P("data")`` batch."""
    rep = parallel.replicated(mesh)
    state_sharding = jax.tree.map(lambda _: rep, state)
    ins = (state_sharding, parallel.batch_sharding(mesh))
    train = {"in_shardings": ins, "out_shardings": (state_sharding, rep), "donate_argnums": 0}
    return train, {"in_shardings": ins, "out_shardings": rep}


def _pmap_runner(
    config, step: Callable, ev: Callable, state: TrainState
) -> tuple[Runner, TrainState]:
    n = config.get("num_devices", 0) or jax.local_device_count()
    devices = jax.local_devices()[:n]
    runner = Runner(
        train_step=jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=0, devices=devices),
        eval_step=jax.pmap(ev, axis_name=parallel.AXIS, devices=devices),
        put_batch=lambda b: parallel.pmap_batch(b, n),
        fetch=lambda m: jax.device_get(parallel.unreplicate(m)),
        to_host_state=parallel.unreplicate,
        from_host_state=lambda s: parallel.replicate_for_pmap(s, n),
        num_devices=n,
    )
    return runner, runner.from_host_state(state)


def _mesh_runner(
    config, step: Callable, ev: Callable, state: TrainState, key: str, with_diag: bool
) -> tuple[Runner, TrainState]:
    mesh = parallel.make_mesh(config.get("num_devices", 0) or None)
    train_opts, eval_opts = mesh_jit_options(state, mesh)
    cache_dir = config.get("compilation_cache", "")
    runner = Runner(
        train_step=stepcache.CachedStep(
            step,
            key=f"train diag={with_diag} {key}",
            cache_dir=cache_dir,
            in_shardings=train_opts["in_shardings"],
            out_shardings=train_opts["out_shardings"],
            donate_state=True,
        ),
        eval_step=stepcache.CachedStep(
            ev,
            key=f"eval {key}",
            cache_dir=cache_dir,
            returns_state=False,
            in_shardings=eval_opts["in_shardings"],
            out_shardings=eval_opts["out_shardings"],
        ),
        put_batch=lambda b: parallel.global_batch(b, mesh),
        fetch=jax.device_get,
        to_host_state=lambda s: s,
        from_host_state=lambda s: s,
        num_devices=mesh.size,
    )
    # Commit the state to the replicated sharding now: a state still on one device (fresh
    # from init or restore) would make the first step compile a second executable.
    return runner, parallel.put_replicated(state, mesh)


def make_runner(
    config,
    graphdef,
    eval_graphdef,
    tx,
    loss_name: str,
    state: TrainState,
    with_diag: bool,
    key: str,
) -> tuple[Runner, TrainState]:
    """The compiled steps of ``config.parallel``'s mode and ``state`` placed for them.

    ``key`` (:func:`trace_key`) names everything besides the arguments that decides the trace.
    """
    step, ev = pure_steps(config, graphdef, eval_graphdef, tx, loss_name, state, with_diag)
    if config.parallel == "pmap":
        return _pmap_runner(config, step, ev, state)
    return _mesh_runner(config, step, ev, state, key, with_diag)


def evaluate(runner: Runner, state, eval_batches) -> dict[str, float]:
    """Loss and accuracy over one pass of ``eval_batches`` (padding rows excluded)."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in eval_batches:
        out = runner.fetch(runner.eval_step(state, runner.put_batch(batch)))
        for k in totals:
            totals[k] += float(out[k])
    n = max(totals["count"], 1.0)
    return {
        "loss": totals["loss_sum"] / n,
        "accuracy": totals["correct"] / n,
        "examples": int(totals["count"]),
    }
