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

Crash safety: a rerun after SIGKILL continues bit-identically (metrics logged after the
last checkpoint are dropped); SIGTERM checkpoints the current step and exits with status
143; a damaged latest checkpoint is skipped with a warning; non-finite steps stop the run
(or are skipped) with the step and the first non-finite layer named, and are never
checkpointed; an unwritable or full workdir fails before training. User mistakes end in
one ``error: ...`` line (the table in README.md, tested by ``tests/test_bad_inputs.py``).
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
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vggjax import hostmem, losses, ops, optim, parallel, stepcache
from vggjax.errors import ConfigError, VggjaxError, WorkdirError, one_of
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


def create_model(
    config: ml_collections.ConfigDict, num_classes: int, in_channels: int
) -> nnx.Module:
    """Build ``config.model`` with ``config.model_options`` in training mode, frozen globs applied."""
    from vggjax.models import ARCHS, build

    name = config.model
    options = dict(config.get("model_options", {}) or {})
    dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(config.get("dtype", "float32"), "bad")
    if dtype == "bad":
        raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
    compute = ops.Policy.parse(config.get("compute", "auto"))
    if name in ARCHS:
        if "head_options" in options and options["head_options"] is not None:
            options["head_options"] = dict(options["head_options"])
        from vggjax.models.vgg import VGG

        _check_options(config, options, VGG.__init__)
        model = build(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            dtype=dtype,
            compute=compute,
            rngs=rngs,
            **options,
        )
    else:
        from vggjax.models.seed_nets import SEED_NETS

        if name not in SEED_NETS:
            raise one_of("model", name, model_names())
        _check_options(config, options, SEED_NETS[name])
        model = SEED_NETS[name](num_classes=num_classes, compute=compute, rngs=rngs, **options)
    globs = config.get("freeze", ()) or ()
    if isinstance(globs, str):
        globs = [g for g in globs.split(",") if g]
    if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) for g in globs):
        raise ConfigError(
            f"config.freeze must be parameter-path globs such as ('features/*',), got {globs!r}"
        )
    if globs:
        freeze(model, list(globs))
    model.train()
    return model


def _check_options(config, options: Mapping[str, Any], fn: Callable) -> None:
    """Raise ConfigError for a ``model_options`` key that ``fn`` (the model's constructor) does not take."""
    import difflib
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    # Set by the trainer itself, not by model_options.
    valid = sorted(
        k
        for k, p in params.items()
        if p.kind is not inspect.Parameter.VAR_POSITIONAL
        and k
        not in (
            "self",
            "cfg",
            "num_classes",
            "in_channels",
            "dtype",
            "compute",
            "rngs",
            "name",
            "batch_norm",
        )
    )
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown model_options key {key!r} for model {config.model!r}; {hint}valid: {', '.join(valid)}"
            )


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


def forward_order(
    graphdef: nnx.GraphDef, state: TrainState, image_shape: tuple[int, ...]
) -> list[int]:
    """Indices of the leaves of ``state.params`` in the order the forward pass first reads them.

    ``jax.tree.leaves(state.params)`` is sorted by name (``bn1_1`` before ``conv1_1``,
    ``features`` before ``head``); error messages want the network's own order ("the
    first layer whose gradient is NaN"). Traced abstractly (no compilation): the first
    equation of the forward jaxpr that consumes each leaf decides, ties by name.
    """
    leaves, treedef = jax.tree.flatten(state.params)
    abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)  # noqa: E731

    def fwd(param_leaves, rest):
        return merge(graphdef, rest.replace(params=jax.tree.unflatten(treedef, param_leaves)))(
            jnp.zeros(image_shape, jnp.float32)
        )

    jaxpr = jax.make_jaxpr(fwd)(abstract(leaves), abstract(state.replace(params=None))).jaxpr
    position = {id(v): i for i, v in enumerate(jaxpr.invars[: len(leaves)])}
    first = {}
    for n, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            i = position.get(id(v))
            if i is not None and i not in first:
                first[i] = n
    return sorted(range(len(leaves)), key=lambda i: (first.get(i, len(jaxpr.eqns)), i))


def leaf_names(tree: Any) -> list[str]:
    """``features.conv1_1.kernel``-style names of the leaves of ``tree`` (NNX's trailing ``value`` dropped)."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        names.append(".".join(keys[:-1] if len(keys) > 1 and keys[-1] == "value" else keys))
    return names


def _leaf_sums(
    tree: Any, square: bool = False, compute: ops.Policy = ops.Policy()
) -> list[jax.Array]:
    """Per floating leaf, one float reduction that is NaN/±inf exactly when the leaf is bad.

    ``square=False``: ``sum(x * 0)`` — ``x * 0`` is 0 for finite ``x`` and NaN for NaN/±inf,
    so the sum is non-finite exactly when the leaf holds a NaN or an infinity, and it cannot
    overflow. ``square=True`` (gradients): ``Σ x²`` (:func:`vggjax.ops.sums_of_squares`, as
    ``compute`` says), which also feeds the gradient norm; it is non-finite for any NaN/inf
    and also when the squares overflow (elements past ~1e19 — the norm is infinite then,
    and the step is counted as non-finite). A float reduction is one vectorized pass;
    ``all(isfinite(x))`` would write a boolean array first.
    One entry per leaf of ``tree`` (0.0 for non-floating leaves), so the list lines up with
    :func:`forward_order`'s indices.
    """
    leaves = jax.tree.leaves(tree)
    floating = [i for i, x in enumerate(leaves) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if square:
        sums = ops.sums_of_squares([leaves[i] for i in floating], policy=compute)
    else:
        sums = [jnp.sum(leaves[i] * 0, dtype=jnp.float32) for i in floating]
    out = [jnp.zeros((), jnp.float32)] * len(leaves)
    for i, v in zip(floating, sums):
        out[i] = v
    return out


def _first_nonfinite(sums: list[jax.Array], order: list[int]) -> jax.Array:
    """Position in ``order`` of the first leaf whose sum is NaN/inf, or -1 (an int32 scalar)."""
    if not sums:
        return jnp.array(-1, jnp.int32)
    ok = jnp.isfinite(jnp.stack([sums[i] for i in order]))
    return jnp.where(jnp.all(ok), -1, jnp.argmin(ok)).astype(jnp.int32)


def _all_finite(sums: list[jax.Array]) -> jax.Array:
    """True when every sum is finite (a bool scalar)."""
    return jnp.all(jnp.isfinite(jnp.stack(sums))) if sums else jnp.array(True)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_name: str,
    *,
    axis_name: str | None = None,
    with_diagnostics: bool = False,
    skip_nonfinite: bool = False,
    compute: ops.Policy | str = "auto",
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure train step ``(state, batch) -> (state, metrics)``.

    Forward in training mode (dropout on, BatchNorm on batch statistics), loss, gradients
    of the ``nnx.Param`` leaves only, optax update, new BatchNorm statistics and RNG
    counters. Under ``jax.pmap`` pass ``axis_name`` so gradients and metrics are averaged
    over devices (``lax.pmean``); under mesh-jit leave it None — the batch is global.
    ``with_diagnostics`` adds per-layer statistics (:mod:`vggjax.diagnostics`);
    ``skip_nonfinite`` keeps the old state when the loss, a gradient, a new weight or a
    new BatchNorm statistic is NaN/inf. ``compute`` is the policy of the step's own
    reductions (the gradients' sums of squares); the model carries its own.
    Metrics are scalars: loss, accuracy, grad_norm, lr, finite (1.0 or 0.0), and
    ``nonfinite_grad`` / ``nonfinite_param``: the position, in :func:`forward_order`, of
    the first parameter whose gradient / updated value is NaN or inf (-1: none); a
    gradient whose squares overflow float32 (elements beyond ~1e19, an infinite norm)
    counts as non-finite too (:func:`_leaf_sums`).
    """

    compute = ops.Policy.parse(compute)

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
        # One reduction per leaf serves the gradient norm, the finiteness test and the
        # culprit's name. The new weights and BatchNorm statistics are tested too: with an
        # absurd learning rate a finite gradient still overflows the update (lr 1e38 x grad 10).
        grad_sq, param_sums = _leaf_sums(grads, square=True, compute=compute), _leaf_sums(params)
        grad_norm = jnp.sqrt(sum(grad_sq)) if grad_sq else jnp.array(0.0, jnp.float32)
        finite = jnp.isfinite(metrics["loss"]) & _all_finite(
            grad_sq + param_sums + _leaf_sums(batch_stats)
        )
        # Static: which parameter the network reads first (traced once, at compile time).
        order = forward_order(graphdef, state, batch["image"].shape)
        bad_grad = _first_nonfinite(grad_sq, order)
        bad_param = _first_nonfinite(param_sums, order)
        new = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            rngs=rngs,
            opt_state=opt_state,
        )
        if skip_nonfinite:
            # Keep the previous weights, statistics and optimizer state; count the step.
            new = jax.tree.map(
                lambda a, b: jnp.where(finite, a, b), new, state.replace(step=state.step + 1)
            )
        metrics = {
            **metrics,
            "grad_norm": grad_norm,
            "lr": optim.current_lr(opt_state),
            "finite": finite.astype(jnp.float32),
            "nonfinite_grad": bad_grad,
            "nonfinite_param": bad_param,
        }
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
    config: ml_collections.ConfigDict,
    num_classes: int,
    in_channels: int,
    tx: optax.GradientTransformation,
) -> tuple[nnx.GraphDef, nnx.GraphDef, Callable[[], TrainState]]:
    """``(train_graphdef, eval_graphdef, make)``: ``make()`` builds a fresh TrainState (jit-able)."""
    abstract = nnx.eval_shape(lambda: create_model(config, num_classes, in_channels))
    graphdef = split_model(abstract)[0]
    abstract.eval()
    eval_graphdef = split_model(abstract)[0]

    def make() -> TrainState:
        model = create_model(config, num_classes, in_channels)
        _, params, frozen, batch_stats, rngs = split_model(model)
        return TrainState(
            jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, tx.init(params)
        )

    return graphdef, eval_graphdef, make


def state_from_model(
    model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
    """``(train_graphdef, eval_graphdef, state)`` for an already-built ``model``.

    The entry point for experiments and user code that build their own network: pair it
    with :func:`make_train_step` / :func:`make_eval_step` and ``jax.jit``. The model is
    put in training mode for the train graphdef and eval mode for the eval one.
    """
    model.eval()
    eval_graphdef = split_model(model)[0]
    model.train()
    graphdef, params, frozen, batch_stats, rngs = split_model(model)
    return (
        graphdef,
        eval_graphdef,
        TrainState(jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, tx.init(params)),
    )


def _unknown_keys(
    config: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "config"
) -> list[tuple[str, str | None]]:
    """``[(dotted key, closest known key or None)]`` for keys of ``config`` that ``known`` lacks."""
    import difflib

    out = []
    for key in config.keys():
        if key not in known:
            close = difflib.get_close_matches(key, list(known.keys()), n=1, cutoff=0.6)
            out.append((f"{prefix}.{key}", f"{prefix}.{close[0]}" if close else None))
    return out


def _check_keys(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for a key the trainer never reads (a typo in a config file is otherwise silently ignored)."""
    from vggjax.configs import default

    known = default.get_config()
    bad = _unknown_keys(config, known)
    for section in ("optim", "diagnostics"):
        sub = config.get(section)
        if bad or not hasattr(sub, "keys"):
            continue
        bad = _unknown_keys(
            sub, known[section] if section != "optim" else optim.DEFAULTS, f"config.{section}"
        )
    if bad:
        key, close = bad[0]
        hint = (
            f"did you mean {close!r}?"
            if close
            else "see vggjax/configs/default.py for the valid keys"
        )
        raise ConfigError(f"unknown config key {key!r} in the config file; {hint}")


def _check_config(config: ml_collections.ConfigDict) -> None:
    _check_keys(config)
    for key in ("batch_size", "num_epochs", "log_every_steps"):
        value = config.get(key)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < 0
            or (key == "batch_size" and value == 0)
        ):
            raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")
    # Integers where 0 means "the default"; a negative one is always a mistake.
    for key, minimum in (
        ("num_train_steps", 0),
        ("checkpoint_every_steps", 0),
        ("keep_checkpoints", 1),
        ("eval_batch_size", 0),
        ("image_size", 0),
        ("num_classes", 0),
        ("channels", 0),
        ("num_devices", 0),
        ("seed", None),
    ):
        value = config.get(key, 0 if minimum is None else minimum)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or (minimum is not None and value < minimum)
        ):
            what = (
                "an integer"
                if minimum is None
                else f"an integer >= {minimum}" + (" (0 = automatic)" if minimum == 0 else "")
            )
            raise ConfigError(f"config.{key} must be {what}, got {value!r}")
    every = config.get("eval_every_epochs", 1.0)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
        raise ConfigError(
            f"config.eval_every_epochs must be a number > 0 (e.g. 0.5 = twice per epoch), got {every!r}"
        )
    if config.parallel not in ("jit", "pmap"):
        raise one_of("parallel mode", config.parallel, ("jit", "pmap"))
    if config.get("nan_policy", "stop") not in ("stop", "skip"):
        raise one_of("nan_policy", config.nan_policy, ("stop", "skip"))
    ops.Policy.parse(config.get("compute", "auto"))  # a bad policy spec is a one-line ConfigError


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


def _runner(
    config, graphdef, eval_graphdef, tx, loss_name, state, with_diag: bool, trace_key: str
) -> tuple[_Runner, TrainState]:
    """The steps of ``config.parallel``'s mode; ``trace_key`` names everything (config, sizes) that decides their trace."""
    skip = config.get("nan_policy", "stop") == "skip"
    compute = ops.Policy.parse(config.get("compute", "auto"))
    if config.parallel == "pmap":
        n = config.get("num_devices", 0) or jax.local_device_count()
        # Each device sees only its slice of the batch, so BatchNorm must pmean its batch
        # statistics over the devices to match mesh-jit (where the batch is one global
        # array). The axis name is a static attribute, so it lives in the graphdef.
        graphdef = _with_batchnorm_axis(graphdef, state, parallel.AXIS)
        step = make_train_step(
            graphdef,
            tx,
            loss_name,
            axis_name=parallel.AXIS,
            with_diagnostics=with_diag,
            skip_nonfinite=skip,
            compute=compute,
        )
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
    step = make_train_step(
        graphdef, tx, loss_name, with_diagnostics=with_diag, skip_nonfinite=skip, compute=compute
    )
    ev = make_eval_step(eval_graphdef, loss_name)
    state_sharding = jax.tree.map(lambda _: rep, state)
    in_shardings = (state_sharding, parallel.batch_sharding(mesh))
    # jax.jit, with the traced step saved next to the compilation cache (a warm start skips tracing).
    cache_dir = config.get("compilation_cache", "")
    runner = _Runner(
        train_step=stepcache.CachedStep(
            step,
            key=f"train diag={with_diag} {trace_key}",
            cache_dir=cache_dir,
            in_shardings=in_shardings,
            out_shardings=(state_sharding, rep),
            donate_state=True,
        ),
        eval_step=stepcache.CachedStep(
            ev,
            key=f"eval {trace_key}",
            cache_dir=cache_dir,
            returns_state=False,
            in_shardings=in_shardings,
            out_shardings=rep,
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


def evaluate(runner: _Runner, state, eval_batches) -> dict[str, float]:
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


def _nbytes(tree: Any) -> int:
    """Bytes of all array leaves of ``tree`` (concrete or ``ShapeDtypeStruct``): one checkpoint's size."""
    total = 0
    for x in jax.tree.leaves(tree):
        dtype = x.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            total += 8 * int(np.prod(x.shape))  # stored as its key data (2 x uint32)
        else:
            total += int(np.prod(x.shape)) * np.dtype(dtype).itemsize
    return total


def check_workdir(workdir: str, checkpoint_bytes: int = 0) -> None:
    """Create ``workdir`` and prove it is writable and has room for a checkpoint, or raise WorkdirError.

    Writes and removes a small probe file (permissions, read-only mounts, a path under a
    regular file all fail here) and compares the free space with ``checkpoint_bytes``
    plus 10% and 16 MiB for metrics. Remote paths (``gs://...``) are left to orbax.
    """
    if "://" in workdir:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".vggjax-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(
            f"cannot write to --workdir={workdir}: {e.strerror or e}; pick a directory you can write to"
        ) from None
    need = int(checkpoint_bytes * 1.1) + (16 << 20)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise WorkdirError(
            f"not enough disk space in --workdir={workdir}: {free / 2**20:.0f} MiB free, a checkpoint needs about "
            f"{need / 2**20:.0f} MiB; free some space or pick another --workdir"
        )


def rewind_metrics(path: str, step: int) -> int:
    """Drop the records after ``step`` (and ``summary`` records) from ``metrics.jsonl``; returns how many.

    A run killed after its last checkpoint logged steps that the resumed run trains
    again; without this the file would hold them twice. A half-written last line (the
    kill came mid-write) is dropped too. The file is replaced atomically.
    """
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                ok = (
                    line.endswith("\n")
                    and rec.get("kind") != "summary"
                    and int(rec["step"]) <= step
                )
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                keep.append(line)
            elif line.strip():
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return dropped


def describe_nonfinite(step: int, metrics: Mapping[str, Any], names: list[str]) -> str:
    """``"step N: loss nan, first non-finite gradient in features.conv1_1.kernel (lr 0.1)"`` for a bad step's host metrics.

    ``names`` are the parameter names in forward order (what ``nonfinite_grad`` and
    ``nonfinite_param`` index).
    """
    loss = float(metrics["loss"])
    g, p = int(metrics.get("nonfinite_grad", -1)), int(metrics.get("nonfinite_param", -1))
    name = lambda i: names[i] if 0 <= i < len(names) else f"parameter #{i}"  # noqa: E731
    parts = [f"loss {loss:.4g}"] if not np.isfinite(loss) else []
    if g >= 0:
        parts.append(f"first non-finite gradient in {name(g)}")
    elif p >= 0:
        parts.append(f"gradients finite but the update made {name(p)} non-finite")
    elif np.isfinite(loss):
        parts.append("non-finite BatchNorm statistics")
    return f"step {step}: {', '.join(parts)} (lr {float(metrics['lr']):.3g})"


class Preemption:
    """Turns SIGTERM (what Cloud TPU, Kubernetes and Slurm send before taking the machine) into a flag.

    Inside the ``with`` block the first SIGTERM sets :attr:`requested`; the train loop
    then finishes the step in flight, writes a checkpoint, waits for it and returns. A
    second SIGTERM gets the previous handler (the default one terminates at once). Only
    installed in the main thread of a single-process job: with several processes, JAX's
    own preemption notifier (``ckpt.reached_preemption``) agrees on a common step instead.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.reason = signal.Signals(signum).name
        signal.signal(signum, self._previous)

    def __enter__(self) -> "Preemption":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluate.

    Returns the final evaluation metrics plus ``steps``, ``seconds`` and ``workdir``; or,
    when SIGTERM arrived (preemption), ``{"preempted": True, "steps": N, "workdir": ...}``
    after step N was checkpointed (rerunning resumes there). Crash-safety: metrics.jsonl
    records after the restored step are dropped on resume, a damaged latest checkpoint is
    skipped with a warning, and no checkpoint of non-finite values is ever written.
    """
    from vggjax import checkpoint, data
    from vggjax import metrics as metrics_lib

    _check_config(config)
    enable_compilation_cache(config.get("compilation_cache", ""))
    n_dev = (
        (config.get("num_devices", 0) or jax.local_device_count())
        if config.parallel == "pmap"
        else (config.get("num_devices", 0) or jax.device_count())
    )
    parallel.check_batch(
        config.batch_size, n_dev if config.parallel == "jit" else n_dev * jax.process_count()
    )
    eval_bs = config.get("eval_batch_size", 0) or config.batch_size
    parallel.check_batch(
        eval_bs,
        n_dev if config.parallel == "jit" else n_dev * jax.process_count(),
        "eval_batch_size",
    )
    data_dir = config.get("data_dir") or None

    classes = tuple(config.get("classes", ()) or ()) or None
    info = data.get_info(config.dataset, data_dir, classes=classes)
    num_classes = config.get("num_classes", 0) or info.num_classes
    in_channels = config.get("channels", 0) or info.channels
    loss_name = _loss_name(config, info)
    batch = config.batch_size
    steps_per_epoch = max(1, (info.num_train_examples or batch) // batch)
    total_steps = config.get("num_train_steps", 0) or config.num_epochs * steps_per_epoch
    tx = optim.make_optimizer(
        config.optim, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )

    graphdef, eval_graphdef, make_state = init_state(config, num_classes, in_channels, tx)
    image_size = config.get("image_size", 0) or info.image_size
    # Fail before any compilation, checkpoint or data work if the model cannot take the images.
    abstract_state = jax.eval_shape(make_state)
    jax.eval_shape(
        lambda: merge(eval_graphdef, make_state())(
            jnp.zeros((1, image_size, image_size, in_channels))
        )
    )
    if config.get("init_from") and not os.path.isdir(os.path.join(workdir, "checkpoints")):
        checkpoint.locate_init_from(config.init_from)  # a wrong path fails before anything is built
    # Last of the checks: a workdir we cannot write to (or a full disk) fails now, not
    # after the first checkpoint interval's worth of training.
    check_workdir(workdir, checkpoint_bytes=_nbytes(abstract_state))
    state = jax.jit(make_state)()

    ckpt = checkpoint.Checkpointer(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        max_to_keep=config.get("keep_checkpoints", 3),
        save_interval_steps=max(1, config.get("checkpoint_every_steps", 0) or total_steps),
    )

    @functools.cache
    def forward_names() -> list[str]:
        # Parameter names in the order the network uses them (only needed for a NaN report).
        names = leaf_names(abstract_state.params)
        return [
            names[i]
            for i in forward_order(
                graphdef, abstract_state, (1, image_size, image_size, in_channels)
            )
        ]

    writer = None
    failed = False
    try:
        start = 0
        if ckpt.latest_step() is not None:
            state, _ = ckpt.restore(state)
            start = int(state.step)
            if ckpt.damaged_steps:
                print(
                    f"warning: checkpoint step(s) {', '.join(map(str, ckpt.damaged_steps))} in {ckpt.directory} could not be read "
                    f"(truncated or half-written); resuming from step {start}, the newest good one",
                    file=sys.stderr,
                )
        elif config.get("init_from"):
            target = {
                "params": state.params,
                "frozen": state.frozen,
                "batch_stats": state.batch_stats,
            }
            loaded, skipped = checkpoint.restore_params_from(config.init_from, target)
            state = state.replace(**loaded, opt_state=tx.init(loaded["params"]))
            for line in skipped:
                print(f"init_from: kept fresh {line}", file=sys.stderr)
        with_diag = bool(config.get("diagnostics", {}).get("enabled", False))
        trace_key = json.dumps(
            {
                "config": config.to_dict(),
                "loss": loss_name,
                "num_classes": num_classes,
                "channels": in_channels,
                "image_size": image_size,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
            },
            sort_keys=True,
            default=repr,
        )
        runner, state = _runner(
            config, graphdef, eval_graphdef, tx, loss_name, state, False, trace_key
        )
        diag_runner = (
            _runner(
                config,
                graphdef,
                eval_graphdef,
                tx,
                loss_name,
                runner.to_host_state(state),
                True,
                trace_key,
            )[0]
            if with_diag
            else None
        )
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
        if start and jax.process_index() == 0:
            # A killed run may have logged steps after its last checkpoint: they are
            # trained again now, so drop them (and a finished run's summary) first.
            rewind_metrics(os.path.join(workdir, "metrics.jsonl"), start)
        writer = metrics_lib.MetricsWriter(
            workdir, total_steps, progress=config.get("progress", True), start_step=start
        )
        if start:
            writer.log(f"resumed from step {start} in {workdir}")
        if start == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        log_every = max(1, config.log_every_steps)
        eval_every = max(1, int(config.get("eval_every_epochs", 1) * steps_per_epoch))
        nan_stop = config.get("nan_policy", "stop") == "stop"
        meter = metrics_lib.Throughput()
        t0 = time.perf_counter()
        pending: list[tuple[int, Any]] = []  # (step, device metrics) since the last record
        fetched: dict[int, Any] = {}  # host copies of pending metrics already checked
        skipped: list[int] = []
        last_eval: dict[str, float] = {}
        preempted_at = None

        def fetch_checked() -> list[Any]:
            """Host metrics of the pending steps; a non-finite step stops the run or is reported as skipped."""
            for s_, m_ in pending:
                if s_ in fetched:
                    continue
                fetched[s_] = m_host = runner.fetch(m_)
                if float(m_host["finite"]) == 0.0:
                    what = describe_nonfinite(s_, m_host, forward_names())
                    if nan_stop:
                        raise VggjaxError(
                            f"non-finite loss, gradient or weights at {what}; lower optim.learning_rate, "
                            "enable optim.grad_clip_norm, or set nan_policy=skip"
                        )
                    skipped.append(s_)
                    if len(skipped) <= 3:
                        more = (
                            "; later skipped steps are only counted (finite=0 in metrics.jsonl)"
                            if len(skipped) == 3
                            else ""
                        )
                        print(
                            f"warning: skipped {what}: the step's update was discarded{more}",
                            file=sys.stderr,
                        )
            return [fetched[s_] for s_, _ in pending]

        batches = parallel.prefetch((runner.put_batch(b) for b in train_iter), lambda b: b, size=2)
        multi_host = jax.process_count() > 1
        with Preemption() as preemption:
            for step in range(start + 1, total_steps + 1):
                b = next(batches)
                use_diag = diag_runner is not None and step % diag_every == 0
                state, m = (diag_runner if use_diag else runner).train_step(state, b)
                pending.append((step, m))
                # SIGTERM on this host, or (multi-host) JAX's preemption notice agreed on by all hosts.
                stop = preemption.requested or (multi_host and ckpt.reached_preemption(step))
                if step % log_every == 0 or step == total_steps or use_diag:
                    host = fetch_checked()
                    pending, fetched = [], {}
                    last = host[-1]
                    rate = meter.lap(len(host) * batch)
                    record = {
                        k: float(v)
                        for k, v in last.items()
                        if not k.startswith(
                            ("grad_norm/", "weight_", "act_", "dead_", "zero_", "nonfinite_")
                        )
                    }
                    record["images_per_sec"] = rate
                    writer.write(step, "train", record)
                    if use_diag:
                        from vggjax import diagnostics

                        writer.write(
                            step,
                            "diag",
                            diagnostics.to_python({k: v for k, v in last.items() if "/" in k}),
                        )
                    writer.progress(
                        step,
                        {"loss": record["loss"], "acc": record["accuracy"], "img/s": round(rate)},
                    )
                elif stop or ckpt.should_save(step):
                    # A checkpoint is about to be written: its steps must pass the NaN check
                    # first (the record itself still waits for the next logging step).
                    fetch_checked()
                if not stop and (step % eval_every == 0 or step == total_steps):
                    last_eval = evaluate(runner, state, eval_batches)
                    writer.write(step, "eval", last_eval)
                    writer.log(
                        f"step {step}/{total_steps}: eval loss {last_eval['loss']:.4f}, accuracy {last_eval['accuracy']:.4f}"
                    )
                    if config.optim.get("schedule") == "plateau":
                        host_state = runner.to_host_state(state)
                        host_state = host_state.replace(
                            opt_state=optim.plateau_update(
                                host_state.opt_state, last_eval["accuracy"], config.optim
                            )
                        )
                        state = runner.from_host_state(host_state)
                ckpt.save(
                    step,
                    runner.to_host_state(state),
                    {"step": step, "model": config.model},
                    force=step == total_steps or stop,
                )
                if stop:
                    preempted_at = step
                    break
        if skipped:
            writer.log(
                f"skipped {len(skipped)} step(s) with non-finite values (nan_policy=skip): first {skipped[0]}, last {skipped[-1]}"
            )
        if preempted_at is not None:
            ckpt.wait()  # the checkpoint must be on disk before the scheduler takes the machine
            writer.log(
                f"preempted ({preemption.reason}) at step {preempted_at}/{total_steps}: checkpoint saved in "
                f"{ckpt.directory}/{preempted_at}; rerun the same command to resume"
            )
            return {"preempted": True, "steps": preempted_at, "workdir": workdir}
        ckpt.wait()
        seconds = time.perf_counter() - t0
        if not last_eval:
            last_eval = evaluate(runner, state, eval_batches)
        summary = {
            **last_eval,
            "steps": total_steps,
            "seconds": round(seconds, 1),
            "workdir": workdir,
        }
        writer.write(total_steps, "summary", summary)
        if writer.active and os.path.exists(writer.path):
            metrics_lib.plot_curves(writer.path, os.path.join(workdir, "curves.png"))
        writer.log(
            f"done: {config.model} on {config.dataset}: test accuracy {last_eval['accuracy']:.4f} "
            f"(loss {last_eval['loss']:.4f}, {last_eval['examples']} examples) after {total_steps} steps "
            f"in {seconds:.0f} s; results in {workdir}"
        )
        return summary
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


# --- CLI -------------------------------------------------------------------------------


def _flags():
    from absl import flags
    from ml_collections import config_flags

    here = os.path.dirname(os.path.abspath(__file__))
    flags.DEFINE_string(
        "workdir", None, "Run directory (default: a fresh ./runs/CONFIG-TIMESTAMP)."
    )
    config_flags.DEFINE_config_file(
        "config", os.path.join(here, "configs", "default.py"), "Config file.", lock_config=True
    )
    flags.DEFINE_string(
        "coordinator_address", None, "Multi-host: HOST:PORT of process 0 (not needed on Cloud TPU)."
    )
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
    flags.DEFINE_string(
        "cpu_collectives", None, "CPU multi-process collectives implementation, e.g. gloo."
    )
    return flags.FLAGS


def main(argv: list[str]) -> None:
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.ERROR)  # TF/TFDS deprecation chatter; our messages are printed
    FLAGS = flags.FLAGS
    parallel.initialize_distributed(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        cpu_collectives=FLAGS.cpu_collectives,
    )
    config = FLAGS.config
    config_path = (
        flags.FLAGS["config"].config_filename
        if hasattr(flags.FLAGS["config"], "config_filename")
        else "default"
    )
    name = os.path.splitext(os.path.basename(str(config_path)))[0] or "default"
    workdir = FLAGS.workdir or default_workdir(name)
    _quiet_orbax_errors()
    try:
        summary = train_and_evaluate(config, workdir)
    except VggjaxError as e:
        _cli_error(str(e))
    if summary.get("preempted"):
        sys.exit(PREEMPTED_EXIT_CODE)


# 128 + SIGTERM, what a shell reports for a process SIGTERM ended: schedulers that requeue
# preempted jobs see "not finished", and `python -m vggjax.train && next` stops here.
PREEMPTED_EXIT_CODE = 143


class _DropOrbaxErrors:
    """Logging filter: orbax logs a failed background write as ERROR with a traceback;
    the trainer reports the same failure as its one-line error, so drop orbax's copy."""

    def filter(self, record) -> bool:
        return not (record.levelno >= 30 and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _quiet_orbax_errors() -> None:
    import logging as std_logging

    for name in ("absl", ""):
        for handler in std_logging.getLogger(name).handlers:
            handler.addFilter(_DropOrbaxErrors())


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
    full = next(
        (g for g in given if g == f"config.{key}" or g.endswith(f".{key}")), f"config.{key}"
    )
    message = f"unknown config key {full!r}"
    return message + (
        f" ({' '.join(hint)})" if hint else "; see the config file for the valid keys"
    )


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

    hostmem.restart_with_hugepages()  # once, before any work (VGGJAX_HUGEPAGES=0: not at all)
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
