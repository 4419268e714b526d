"""``python -m vggjax.train``: train a VGG (or a reference-case net) on a TFDS dataset.

    python -m vggjax.train                                  # default config, embedded digits
    python -m vggjax.train --config=vggjax/configs/cifar10_vgg16_bn.py --workdir=runs/c10 \
        --config.batch_size=128 --config.optim.learning_rate=0.05

The main is thin; the pieces are small pure functions a user can reuse:
:func:`create_model`, :func:`init_state`, :func:`make_train_step` (one pure function
``(state, batch) -> (state, metrics)``, jitted once with the state donated) and
:func:`make_eval_step`. Data parallelism: the default runs the step under ``jax.jit`` on
a global batch sharded over a ``("data",)`` mesh; ``--config.parallel=pmap`` runs the
very same step under ``jax.pmap`` with ``lax.pmean``. Checkpoints (orbax) go to
``WORKDIR/checkpoints`` and a rerun of the same command resumes from the latest one.
"""

from __future__ import annotations

import os

# Before anything imports TensorFlow (the input pipeline): keep its C++ logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TF only decodes and crops images here; its oneDNN notice is 4 lines of noise on every run.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import dataclasses
import datetime
import functools
import json
import os
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vggjax import losses, optim, parallel
from vggjax.errors import ConfigError, VggjaxError, one_of
from vggjax.freeze import Frozen, freeze

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as a whole).

    ``params`` are the trainable ``nnx.Param`` weights; ``frozen`` the non-trainable ones;
    ``batch_stats`` the BatchNorm running statistics; ``rngs`` the random streams
    (dropout); ``opt_state`` the optax state (momentum, learning-rate schedule state).
    """

    step: jax.Array
    params: nnx.State
    frozen: nnx.State
    batch_stats: nnx.State
    rngs: nnx.State
    opt_state: Any


def split_model(model: nnx.Module):
    """``(graphdef, params, frozen, batch_stats, rngs)``: the jit-boundary split of a model."""
    return nnx.split(model, nnx.Param, Frozen, nnx.BatchStat, ...)


def merge(graphdef, state: TrainState) -> nnx.Module:
    """Rebuild the NNX model of ``state`` (inside a jitted function this costs nothing).

    The model gets its own Variables (``copy=True``): running it updates BatchNorm
    statistics and RNG counters in the model only, never in ``state`` (which the train
    step still needs intact, e.g. to keep the old statistics when it skips a NaN step).
    """
    return nnx.merge(graphdef, state.params, state.frozen, state.batch_stats, state.rngs, copy=True)


# --- model -----------------------------------------------------------------------------


def model_names() -> list[str]:
    """Every name ``config.model`` accepts: the VGG architectures and the reference-case nets."""
    from vggjax.models import ARCHS

    names = list(ARCHS)
    try:
        from vggjax.models.seed_nets import SEED_NETS

        names += list(SEED_NETS)
    except ImportError:  # pragma: no cover - seed nets are part of the package
        pass
    return names


def create_model(config: ml_collections.ConfigDict, num_classes: int, in_channels: int) -> nnx.Module:
    """Build ``config.model`` with ``config.model_options`` in training mode, frozen globs applied."""
    from vggjax.models import ARCHS, build

    name = config.model
    options = dict(config.get("model_options", {}) or {})
    dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(config.get("dtype", "float32"), "bad")
    if dtype == "bad":
        raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
    if name in ARCHS:
        if "head_options" in options and options["head_options"] is not None:
            options["head_options"] = dict(options["head_options"])
        model = build(name, num_classes=num_classes, in_channels=in_channels, dtype=dtype, rngs=rngs, **options)
    else:
        from vggjax.models.seed_nets import SEED_NETS

        if name not in SEED_NETS:
            raise one_of("model", name, model_names())
        model = SEED_NETS[name](num_classes=num_classes, rngs=rngs, **options)
    globs = config.get("freeze", ()) or ()
    if isinstance(globs, str):
        globs = [g for g in globs.split(",") if g]
    if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) for g in globs):
        raise ConfigError(f"config.freeze must be parameter-path globs such as ('features/*',), got {globs!r}")
    if globs:
        freeze(model, list(globs))
    model.train()
    return model


def _kwargs_error(e: TypeError, config) -> ConfigError:
    return ConfigError(f"bad model_options for model {config.model!r}: {e}")


# --- steps -----------------------------------------------------------------------------


def loss_and_metrics(loss_name: str, logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Mean loss over the valid (``mask``) examples of ``batch`` and its accuracy."""
    mask = batch.get("mask")
    loss = losses.get_loss(loss_name)(logits, batch["label"], mask=mask)
    if loss_name == "multilabel_soft_margin":
        acc = losses.multilabel_accuracy(logits, batch["label"], mask=mask)
    else:
        acc = losses.accuracy(logits, batch["label"], mask=mask)
    return loss, {"loss": loss, "accuracy": acc}


def _all_finite(tree: Any) -> jax.Array:
    """True when no floating leaf of ``tree`` holds a NaN or an infinity (a bool scalar)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_name: str,
    *,
    axis_name: str | None = None,
    with_diagnostics: bool = False,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure train step ``(state, batch) -> (state, metrics)``.

    Forward in training mode (dropout on, BatchNorm on batch statistics), loss, gradients
    of the ``nnx.Param`` leaves only, optax update, new BatchNorm statistics and RNG
    counters. Under ``jax.pmap`` pass ``axis_name`` so gradients and metrics are averaged
    over devices (``lax.pmean``); under mesh-jit leave it None — the batch is global.
    ``with_diagnostics`` adds per-layer statistics (:mod:`vggjax.diagnostics`);
    ``skip_nonfinite`` keeps the old state when the loss, a gradient, a new weight or a
    new BatchNorm statistic is NaN/inf.
    Metrics are scalars: loss, accuracy, grad_norm, lr, finite (1.0 or 0.0).
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        model = merge(graphdef, state)

        def loss_fn(model):
            logits, feats = model(batch["image"], return_features=True)
            loss, metrics = loss_and_metrics(loss_name, logits, batch)
            return loss, (metrics, feats)

        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
        (_, (metrics, feats)), grads = grad_fn(model)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        _, _, _, batch_stats, rngs = split_model(model)
        grad_norm = optax.tree.norm(grads)
        # The new weights and BatchNorm statistics too: with an absurd learning rate a
        # finite gradient still overflows the update (lr 1e38 x grad 10 = inf weights).
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & _all_finite((params, batch_stats))
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, rngs=rngs, opt_state=opt_state)
        if skip_nonfinite:
            # Keep the previous weights, statistics and optimizer state; count the step.
            new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state.replace(step=state.step + 1))
        metrics = {**metrics, "grad_norm": grad_norm, "lr": optim.current_lr(opt_state), "finite": finite.astype(jnp.float32)}
        if with_diagnostics:
            from vggjax import diagnostics

            metrics.update(diagnostics.layer_stats(state.params, grads, feats))
        return new, metrics

    return step


def make_eval_step(eval_graphdef: nnx.GraphDef, loss_name: str, *, axis_name: str | None = None):
    """The pure eval step ``(state, batch) -> sums``: ``loss_sum`` (loss·n), ``correct`` (accuracy·n), ``count`` (n).

    Runs the model in eval mode (dropout off, BatchNorm running statistics). Sums, not
    means, so padded last batches (``mask=False`` rows) are exact.
    """

    def step(state: TrainState, batch: Batch) -> Metrics:
        model = merge(eval_graphdef, state)
        logits = model(batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        n = jnp.sum(mask)
        loss, metrics = loss_and_metrics(loss_name, logits, batch)
        out = {"loss_sum": loss * n, "correct": metrics["accuracy"] * n, "count": n}
        if axis_name is not None:
            out = jax.lax.psum(out, axis_name)
        return out

    return step


# --- set-up ----------------------------------------------------------------------------


def _loss_name(config, info) -> str:
    name = config.get("loss", "auto")
    if name == "auto":
        return "multilabel_soft_margin" if info.multilabel else "softmax_cross_entropy"
    losses.get_loss(name)  # validates, listing the valid names
    return name


def init_state(
    config: ml_collections.ConfigDict, num_classes: int, in_channels: int, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, nnx.GraphDef, Callable[[], TrainState]]:
    """``(train_graphdef, eval_graphdef, make)``: ``make()`` builds a fresh TrainState (jit-able)."""
    abstract = nnx.eval_shape(lambda: create_model(config, num_classes, in_channels))
    graphdef = split_model(abstract)[0]
    abstract.eval()
    eval_graphdef = split_model(abstract)[0]

    def make() -> TrainState:
        model = create_model(config, num_classes, in_channels)
        _, params, frozen, batch_stats, rngs = split_model(model)
        return TrainState(jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, tx.init(params))

    return graphdef, eval_graphdef, make


def state_from_model(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
    """``(train_graphdef, eval_graphdef, state)`` for an already-built ``model``.

    The entry point for experiments and user code that build their own network: pair it
    with :func:`make_train_step` / :func:`make_eval_step` and ``jax.jit``. The model is
    put in training mode for the train graphdef and eval mode for the eval one.
    """
    model.eval()
    eval_graphdef = split_model(model)[0]
    model.train()
    graphdef, params, frozen, batch_stats, rngs = split_model(model)
    return graphdef, eval_graphdef, TrainState(jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, tx.init(params))


def _check_config(config: ml_collections.ConfigDict) -> None:
    for key in ("batch_size", "num_epochs", "log_every_steps"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (key == "batch_size" and value == 0):
            raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")
    if config.parallel not in ("jit", "pmap"):
        raise one_of("parallel mode", config.parallel, ("jit", "pmap"))
    if config.get("nan_policy", "stop") not in ("stop", "skip"):
        raise one_of("nan_policy", config.nan_policy, ("stop", "skip"))


def default_workdir(config_name: str) -> str:
    """A fresh ``./runs/NAME-YYYYmmdd-HHMMSS`` directory name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config_name}-{stamp}")


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


@dataclasses.dataclass
class _Runner:
    """The compiled steps and how to feed them for one parallel mode."""

    train_step: Callable
    eval_step: Callable
    put_batch: Callable[[dict], Any]
    fetch: Callable[[Any], Any]  # device metrics -> host numpy (device 0 copy under pmap)
    to_host_state: Callable[[TrainState], TrainState]
    from_host_state: Callable[[TrainState], TrainState]
    num_devices: int


def _with_batchnorm_axis(graphdef: nnx.GraphDef, state: TrainState, axis_name: str) -> nnx.GraphDef:
    """``graphdef`` with every BatchNorm averaging its batch statistics over ``axis_name``."""
    model = merge(graphdef, state)
    parallel.set_batchnorm_axis(model, axis_name)
    return split_model(model)[0]


def _runner(config, graphdef, eval_graphdef, tx, loss_name, state, with_diag: bool) -> tuple[_Runner, TrainState]:
    skip = config.get("nan_policy", "stop") == "skip"
    if config.parallel == "pmap":
        n = config.get("num_devices", 0) or jax.local_device_count()
        # Each device sees only its slice of the batch, so BatchNorm must pmean its batch
        # statistics over the devices to match mesh-jit (where the batch is one global
        # array). The axis name is a static attribute, so it lives in the graphdef.
        graphdef = _with_batchnorm_axis(graphdef, state, parallel.AXIS)
        step = make_train_step(graphdef, tx, loss_name, axis_name=parallel.AXIS, with_diagnostics=with_diag, skip_nonfinite=skip)
        ev = make_eval_step(eval_graphdef, loss_name, axis_name=parallel.AXIS)
        devices = jax.local_devices()[:n]
        runner = _Runner(
            train_step=jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=0, devices=devices),
            eval_step=jax.pmap(ev, axis_name=parallel.AXIS, devices=devices),
            put_batch=lambda b: parallel.pmap_batch(b, n),
            fetch=lambda m: jax.device_get(parallel.unreplicate(m)),
            to_host_state=parallel.unreplicate,
            from_host_state=lambda s: parallel.replicate_for_pmap(s, n),
            num_devices=n,
        )
        return runner, runner.from_host_state(state)
    mesh = parallel.make_mesh(config.get("num_devices", 0) or None)
    rep = parallel.replicated(mesh)
    step = make_train_step(graphdef, tx, loss_name, with_diagnostics=with_diag, skip_nonfinite=skip)
    ev = make_eval_step(eval_graphdef, loss_name)
    state_sharding = jax.tree.map(lambda _: rep, state)
    runner = _Runner(
        train_step=jax.jit(step, in_shardings=(state_sharding, parallel.batch_sharding(mesh)), out_shardings=(state_sharding, rep), donate_argnums=0),
        eval_step=jax.jit(ev, in_shardings=(state_sharding, parallel.batch_sharding(mesh)), out_shardings=rep),
        put_batch=lambda b: parallel.global_batch(b, mesh),
        fetch=jax.device_get,
        to_host_state=lambda s: s,
        from_host_state=lambda s: s,
        num_devices=mesh.size,
    )
    # Commit the state to the replicated sharding now: a state still on one device (fresh
    # from init or restore) would make the first step compile a second executable.
    return runner, parallel.put_replicated(state, mesh)


def evaluate(runner: _Runner, state, eval_batches) -> dict[str, float]:
    """Loss and accuracy over one pass of ``eval_batches`` (padding rows excluded)."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in eval_batches:
        out = runner.fetch(runner.eval_step(state, runner.put_batch(batch)))
        for k in totals:
            totals[k] += float(out[k])
    n = max(totals["count"], 1.0)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "examples": int(totals["count"])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluate.

    Returns the final evaluation metrics plus ``steps``, ``seconds`` and ``workdir``.
    """
    from vggjax import checkpoint, data, metrics as metrics_lib

    _check_config(config)
    enable_compilation_cache(config.get("compilation_cache", ""))
    n_dev = (config.get("num_devices", 0) or jax.local_device_count()) if config.parallel == "pmap" else (
        config.get("num_devices", 0) or jax.device_count()
    )
    parallel.check_batch(config.batch_size, n_dev if config.parallel == "jit" else n_dev * jax.process_count())
    eval_bs = config.get("eval_batch_size", 0) or config.batch_size
    parallel.check_batch(eval_bs, n_dev if config.parallel == "jit" else n_dev * jax.process_count(), "eval_batch_size")
    data_dir = config.get("data_dir") or None

    classes = tuple(config.get("classes", ()) or ()) or None
    info = data.get_info(config.dataset, data_dir, classes=classes)
    num_classes = config.get("num_classes", 0) or info.num_classes
    in_channels = config.get("channels", 0) or info.channels
    loss_name = _loss_name(config, info)
    batch = config.batch_size
    steps_per_epoch = max(1, (info.num_train_examples or batch) // batch)
    total_steps = config.get("num_train_steps", 0) or config.num_epochs * steps_per_epoch
    tx = optim.make_optimizer(config.optim, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    graphdef, eval_graphdef, make_state = init_state(config, num_classes, in_channels, tx)
    image_size = config.get("image_size", 0) or info.image_size
    # Fail before any compilation, checkpoint or data work if the model cannot take the images.
    jax.eval_shape(lambda: merge(eval_graphdef, make_state())(jnp.zeros((1, image_size, image_size, in_channels))))
    state = jax.jit(make_state)()

    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        max_to_keep=config.get("keep_checkpoints", 3),
        save_interval_steps=max(1, config.get("checkpoint_every_steps", 0) or total_steps),
    )
    writer = None
    try:
        start = 0
        if ckpt.latest_step() is not None:
            state, _ = ckpt.restore(state)
            start = int(state.step)
        elif config.get("init_from"):
            target = {"params": state.params, "frozen": state.frozen, "batch_stats": state.batch_stats}
            loaded, skipped = checkpoint.restore_params_from(config.init_from, target)
            state = state.replace(**loaded, opt_state=tx.init(loaded["params"]))
            for line in skipped:
                print(f"init_from: kept fresh {line}", file=sys.stderr)
        with_diag = bool(config.get("diagnostics", {}).get("enabled", False))
        runner, state = _runner(config, graphdef, eval_graphdef, tx, loss_name, state, False)
        diag_runner = _runner(config, graphdef, eval_graphdef, tx, loss_name, runner.to_host_state(state), True)[0] if with_diag else None
        diag_every = int(config.get("diagnostics", {}).get("every_steps", 100) or 100)

        train_iter, eval_batches, _ = data.get_datasets(
            config.dataset,
            global_batch_size=batch,
            eval_batch_size=eval_bs,
            image_size=image_size,
            seed=config.seed,
            data_dir=data_dir,
            start_step=start,
            augment=config.get("augment", "default"),
            normalize=config.get("normalize", "default"),
            channels=in_channels,
            classes=classes,
        )
        writer = metrics_lib.MetricsWriter(workdir, total_steps, progress=config.get("progress", True), start_step=start)
        if start:
            writer.log(f"resumed from step {start} in {workdir}")
        if start == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        log_every = max(1, config.log_every_steps)
        eval_every = max(1, int(config.get("eval_every_epochs", 1) * steps_per_epoch))
        meter = metrics_lib.Throughput()
        t0 = time.perf_counter()
        pending: list[Any] = []
        last_eval: dict[str, float] = {}
        batches = parallel.prefetch((runner.put_batch(b) for b in train_iter), lambda b: b, size=2)
        for step in range(start + 1, total_steps + 1):
            b = next(batches)
            use_diag = diag_runner is not None and step % diag_every == 0
            state, m = (diag_runner if use_diag else runner).train_step(state, b)
            pending.append(m)
            if step % log_every == 0 or step == total_steps or use_diag:
                host = [runner.fetch(x) for x in pending]
                pending = []
                for i, m_host in enumerate(host):
                    if float(m_host["finite"]) == 0.0 and config.get("nan_policy", "stop") == "stop":
                        # pending holds the steps since the last fetch, in order.
                        raise VggjaxError(
                            f"non-finite loss, gradient or weights at step {step - len(host) + 1 + i} (lr {float(m_host['lr']):.3g}); "
                            "lower optim.learning_rate, enable optim.grad_clip_norm, or set nan_policy=skip"
                        )
                last = host[-1]
                rate = meter.lap(len(host) * batch)
                record = {k: float(v) for k, v in last.items() if not k.startswith(("grad_norm/", "weight_", "act_", "dead_", "zero_"))}
                record["images_per_sec"] = rate
                writer.write(step, "train", record)
                if use_diag:
                    from vggjax import diagnostics

                    writer.write(step, "diag", diagnostics.to_python({k: v for k, v in last.items() if "/" in k}))
                writer.progress(step, {"loss": record["loss"], "acc": record["accuracy"], "img/s": round(rate)})
            if step % eval_every == 0 or step == total_steps:
                last_eval = evaluate(runner, state, eval_batches)
                writer.write(step, "eval", last_eval)
                writer.log(f"step {step}/{total_steps}: eval loss {last_eval['loss']:.4f}, accuracy {last_eval['accuracy']:.4f}")
                if config.optim.get("schedule") == "plateau":
                    host_state = runner.to_host_state(state)
                    host_state = host_state.replace(opt_state=optim.plateau_update(host_state.opt_state, last_eval["accuracy"], config.optim))
                    state = runner.from_host_state(host_state)
            if ckpt.save(step, runner.to_host_state(state), {"step": step, "model": config.model}, force=step == total_steps):
                pass
        ckpt.wait()
        seconds = time.perf_counter() - t0
        if not last_eval:
            last_eval = evaluate(runner, state, eval_batches)
        summary = {**last_eval, "steps": total_steps, "seconds": round(seconds, 1), "workdir": workdir}
        writer.write(total_steps, "summary", summary)
        if writer.active and os.path.exists(writer.path):
            metrics_lib.plot_curves(writer.path, os.path.join(workdir, "curves.png"))
        writer.log(
            f"done: {config.model} on {config.dataset}: test accuracy {last_eval['accuracy']:.4f} "
            f"(loss {last_eval['loss']:.4f}, {last_eval['examples']} examples) after {total_steps} steps "
            f"in {seconds:.0f} s; results in {workdir}"
        )
        return summary
    finally:
        if writer is not None:
            writer.close()
        ckpt.close()


# --- CLI -------------------------------------------------------------------------------


def _flags():
    from absl import flags
    from ml_collections import config_flags

    here = os.path.dirname(os.path.abspath(__file__))
    flags.DEFINE_string("workdir", None, "Run directory (default: a fresh ./runs/CONFIG-TIMESTAMP).")
    config_flags.DEFINE_config_file("config", os.path.join(here, "configs", "default.py"), "Config file.", lock_config=True)
    flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 (not needed on Cloud TPU).")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
    flags.DEFINE_string("cpu_collectives", None, "CPU multi-process collectives implementation, e.g. gloo.")
    return flags.FLAGS


def main(argv: list[str]) -> None:
    from absl import flags

    from absl import logging

    del argv
    logging.set_verbosity(logging.ERROR)  # TF/TFDS deprecation chatter; our messages are printed
    FLAGS = flags.FLAGS
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, cpu_collectives=FLAGS.cpu_collectives)
    config = FLAGS.config
    config_path = flags.FLAGS["config"].config_filename if hasattr(flags.FLAGS["config"], "config_filename") else "default"
    name = os.path.splitext(os.path.basename(str(config_path)))[0] or "default"
    workdir = FLAGS.workdir or default_workdir(name)
    try:
        train_and_evaluate(config, workdir)
    except VggjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _cli_error(message: str) -> None:
    """Print ``error: MESSAGE`` (on one line) to stderr and exit with status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def _flag_error_message(e: BaseException) -> str:
    """One line for a bad command line: an absl flag error or an unknown ``--config.KEY``."""
    from absl import flags

    if isinstance(e, flags.Error):
        return str(e)
    # ml_collections reports an unknown override key as AttributeError(KeyError("'key'\nDid you mean ...")).
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    if isinstance(e, OSError):  # the --config file is missing or failed to import
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return f"cannot load the --config file: {lines[-1] if lines else e}"
    text = str(e.args[0]) if e.args else str(e)
    key, *hint = text.splitlines() or [""]
    key = key.strip("'\"")
    # Name the whole override (--config.optim.lr), not only its last component.
    given = [a.split("=")[0][2:] for a in sys.argv[1:] if a.startswith("--config.")]
    full = next((g for g in given if g == f"config.{key}" or g.endswith(f".{key}")), f"config.{key}")
    message = f"unknown config key {full!r}"
    return message + (f" ({' '.join(hint)})" if hint else "; see the config file for the valid keys")


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        # ml_collections defers a config file's load error to the first use of the config.
        getattr(flags.FLAGS.config, "model", None)
        return rest
    except (flags.Error, KeyError, AttributeError, OSError) as e:
        _cli_error(_flag_error_message(e))
        raise  # unreachable


def run() -> None:
    """Console entry point (``vggjax-train``)."""
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # Defining --config already applies the --config.KEY=VALUE overrides of the
        # default config file (an unknown key fails here, not in flag parsing).
        _flags()
    except (KeyError, AttributeError) as e:
        _cli_error(_flag_error_message(e))
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
