"""The trainability check's measurement: one forward + backward pass over one batch."""

from __future__ import annotations

import collections
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax import diagnostics, losses, ops
from vggjax.trainability.report import Layer, Report, Setup, constant_loss
from vggjax.trainability.rules import findings


def input_signal(x: jax.Array) -> jax.Array:
    """The part of ``x (N, ...)`` that depends on the input: its std across the batch axis, per
    unit, averaged (float32 scalar)."""
    x = x.astype(jnp.float32).reshape(x.shape[0], -1)
    return jnp.mean(jnp.std(x, axis=0))


def _signal(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(signal, spread)``: :func:`input_signal`, and that over the mean magnitude."""
    signal = input_signal(x)
    return signal, signal / (jnp.mean(jnp.abs(x.astype(jnp.float32))) + 1e-30)


def measure(
    model: nnx.Module, batch: dict[str, jax.Array], loss_name: str, static: dict
) -> dict[str, Any]:
    """The raw numbers of the check as arrays (jit-able; pass a model in training mode). What is
    known at trace time — the feats order, kernel shapes, the number of logits — goes into
    ``static``."""

    def loss_fn(m):
        logits, feats = m(batch["image"], return_features=True)
        loss = losses.get_loss(loss_name)(logits, batch["label"], mask=batch.get("mask"))
        return loss, (logits, collections.OrderedDict(feats))

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (loss, (logits, feats)), grads = grad_fn(model)
    params = nnx.state(model, nnx.Param)
    kernels = {
        "/".join(map(str, p)): (v, g) for (p, v), (_, g) in zip(_kernels(params), _kernels(grads))
    }
    static.update(
        feat_order=list(feats),
        feat_shapes={k: tuple(v.shape) for k, v in feats.items() if hasattr(v, "shape")},
        logit_values=logits.size,
        logit_rank=logits.ndim,
        batch=logits.shape[0],
        shapes={k: v.shape for k, (v, _) in kernels.items()},
    )
    return {
        "loss": loss,
        "stats": _layer_stats(grads, feats),
        "signal": {k: _signal(v) for k, v in feats.items() if hasattr(v, "ndim") and v.ndim >= 2},
        "kernels": {
            k: (jnp.std(v), jnp.all(v == 0), jnp.all(g == 0)) for k, (v, g) in kernels.items()
        },
        "logits": (*_signal(logits), jnp.min(logits)),
    }


def _layer_stats(grads: Any, feats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The few statistics the check needs, named as :func:`vggjax.diagnostics.layer_stats` names
    them (``act_std/``, ``dead_frac/``, ``grad_norm/``, ``global_grad_norm``); a lean set keeps the
    check's compile short."""
    out: dict[str, jax.Array] = {}
    for name, x in feats.items():
        if not (hasattr(x, "ndim") and x.ndim >= 2):
            continue
        x = x.astype(jnp.float32)
        out[f"act_std/{name}"] = jnp.std(x)
        if diagnostics.default_is_relu(name):
            peak = jnp.max(jnp.abs(x), axis=tuple(range(x.ndim - 1)))
            out[f"dead_frac/{name}"] = jnp.mean((peak == 0).astype(jnp.float32))
    squares: dict[str, list[jax.Array]] = collections.defaultdict(list)
    for path, g in diagnostics._flatten(grads):
        g = g.astype(jnp.float32).ravel()
        squares[diagnostics._split(path)[0]].append(jnp.vdot(g, g))
    for layer, sq in squares.items():
        out[f"grad_norm/{layer}"] = jnp.sqrt(sum(sq))
    out["global_grad_norm"] = jnp.sqrt(sum(sum(sq) for sq in squares.values()))
    return out


def _kernels(state: Any) -> list[tuple[tuple[str, ...], jax.Array]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys[-1] == "value":
            keys = keys[:-1]
        if keys[-1] == "kernel":
            out.append((tuple(keys[:-1]), leaf))
    return out


def _layers(raw: dict[str, Any], static: dict) -> list[Layer]:
    """Host numbers per feats entry, joined with the kernel that writes it."""
    stats, signal = raw["stats"], raw["signal"]
    owners = {}
    for path, (std, zero_w, zero_g) in raw["kernels"].items():
        feat = diagnostics._feat_for(path.split("/"), static["feat_order"])
        if feat is not None and feat not in owners:
            fan_in = int(np.prod(static["shapes"][path][:-1]))
            owners[feat] = (path, float(std) * math.sqrt(fan_in), bool(zero_w), bool(zero_g))
    rows = []
    for name in static["feat_order"]:
        if name not in signal:
            continue
        param = owners.get(name)
        dead = stats.get(f"dead_frac/{name}")
        shape = static["feat_shapes"][name]
        values = int(np.prod(shape[:-1])) if diagnostics.is_batch_norm(name) else None
        grad = stats.get(f"grad_norm/{param[0]}") if param else None
        rows.append(
            Layer(
                name,
                float(stats[f"act_std/{name}"]),
                float(signal[name][0]),
                float(signal[name][1]),
                None if dead is None else float(dead),
                param[0] if param else None,
                None if grad is None else float(grad),
                param[1] if param else None,
                param[2] if param else False,
                param[3] if param else False,
                values,
            )
        )
    return rows


def check(
    model: nnx.Module,
    batch: dict[str, Any],
    loss_name: str,
    num_classes: int,
    *,
    before: Report | None = None,
    setup: Setup | None = None,
    trained: bool = False,
) -> Report:
    """Measure ``model`` (any vggjax-convention network, left unchanged) on one ``batch`` and find
    problems.

    ``batch`` holds NHWC ``image``, ``label`` and optionally ``mask``, as the train step takes.
    ``before`` is the check of the same network at initialisation on the same batch, when
    ``model`` is one being trained: a layer that died since then is told apart from one dead from
    the start; ``trained`` says ``model`` has been trained (implied by ``before``). ``setup`` (the
    run's learning rate and batch size) lets a finding name them.
    The model runs on a copy in training mode — BatchNorm on batch statistics, as the first step
    sees it — but with dropout off, whose random masks would pass for input dependence; one
    forward and one backward pass, compiled once.
    """
    graphdef, state = nnx.split(model)
    static: dict[str, Any] = {}

    def run(state, batch):
        m = nnx.merge(graphdef, state, copy=True)
        m.train()
        m.set_attributes(nnx.Dropout, deterministic=True, raise_if_not_found=False)
        return measure(m, batch, loss_name, static)

    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    # Compiled to run once, for this host's platform: the platform's run-once options.
    options = ops.run_once_options(jax.default_backend())
    compiled = jax.jit(run).lower(state, batch).compile(options)
    raw = jax.device_get(compiled(state, batch))
    layers = _layers(raw, static)
    signal, spread, logits_min = (float(v) for v in raw["logits"])
    report = Report(
        layers,
        float(raw["loss"]),
        constant_loss(loss_name, num_classes, batch["label"]),
        signal,
        spread,
        float(logits_min),
        int(static["logit_values"]),
        float(raw["stats"]["global_grad_norm"]),
        [],
        static["logit_rank"] == 2,
        int(static["batch"]),
        trained=trained or before is not None,
    )
    report.findings = findings(report, before, setup)
    return report
