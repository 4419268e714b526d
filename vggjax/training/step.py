"""The pure train and eval steps: ``(state, batch) -> (state, metrics)`` and
``(state, batch) -> sums``.

One function each, jitted once by the caller (mesh-jit or pmap: :mod:`vggjax.training.runner`;
your own ``jax.jit`` in experiments and user code). The train step also measures, in the same
reductions that give the gradient norm, whether the loss, the gradients, the new weights and
the new BatchNorm statistics are finite, and which parameter (in the network's own order)
went bad first — what the NaN policy of the loop reports.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vggjax import losses, ops, optim
from vggjax.training.state import TrainState, merge, split_model

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


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

    def abstract(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)

    def fwd(param_leaves, rest):
        model = merge(graphdef, rest.replace(params=jax.tree.unflatten(treedef, param_leaves)))
        return model(jnp.zeros(image_shape, jnp.float32))

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
    """``features.conv1_1.kernel``-style names of the leaves of ``tree`` (NNX's trailing ``value``
    dropped)."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        names.append(".".join(keys[:-1] if len(keys) > 1 and keys[-1] == "value" else keys))
    return names


def leaf_sums(
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


def first_nonfinite(sums: list[jax.Array], order: list[int]) -> jax.Array:
    """Position in ``order`` of the first leaf whose sum is NaN/inf, or -1 (an int32 scalar)."""
    if not sums:
        return jnp.array(-1, jnp.int32)
    ok = jnp.isfinite(jnp.stack([sums[i] for i in order]))
    return jnp.where(jnp.all(ok), -1, jnp.argmin(ok)).astype(jnp.int32)


def all_finite(sums: list[jax.Array]) -> jax.Array:
    """True when every sum is finite (a bool scalar)."""
    return jnp.all(jnp.isfinite(jnp.stack(sums))) if sums else jnp.array(True)


def _health(
    loss, grads, params, batch_stats, order: list[int], compute: ops.Policy
) -> dict[str, jax.Array]:
    """Gradient norm, all-finite flag and the first bad gradient / parameter, from one reduction
    per leaf.

    The new weights and BatchNorm statistics are tested too: with an absurd learning rate
    a finite gradient still overflows the update (lr 1e38 × grad 10).
    """
    grad_sq, param_sums = leaf_sums(grads, square=True, compute=compute), leaf_sums(params)
    finite = jnp.isfinite(loss) & all_finite(grad_sq + param_sums + leaf_sums(batch_stats))
    return {
        "grad_norm": jnp.sqrt(sum(grad_sq)) if grad_sq else jnp.array(0.0, jnp.float32),
        "finite": finite,
        "nonfinite_grad": first_nonfinite(grad_sq, order),
        "nonfinite_param": first_nonfinite(param_sums, order),
    }


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
    counts as non-finite too (:func:`leaf_sums`).
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
        # Static: which parameter the network reads first (traced once, at compile time).
        order = forward_order(graphdef, state, batch["image"].shape)
        health = _health(metrics["loss"], grads, params, batch_stats, order, compute)
        new = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            rngs=rngs,
            opt_state=opt_state,
        )
        if skip_nonfinite:
            # Keep the previous weights, statistics and optimizer state; count the step.
            old = state.replace(step=state.step + 1)
            new = jax.tree.map(lambda a, b: jnp.where(health["finite"], a, b), new, old)
        metrics = {**metrics, **health, "lr": optim.current_lr(opt_state)}
        metrics["finite"] = health["finite"].astype(jnp.float32)
        if with_diagnostics:
            from vggjax import diagnostics

            metrics.update(diagnostics.layer_stats(state.params, grads, feats))
        return new, metrics

    return step


def make_eval_step(eval_graphdef: nnx.GraphDef, loss_name: str, *, axis_name: str | None = None):
    """The pure eval step ``(state, batch) -> sums``: ``loss_sum`` (loss·n), ``correct``
    (accuracy·n), ``count`` (n).

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


def describe_nonfinite(step: int, metrics: Mapping[str, Any], names: list[str]) -> str:
    """``"step N: loss nan, first non-finite gradient in features.conv1_1.kernel (lr 0.1)"`` for a
    bad step's host metrics.

    ``names`` are the parameter names in forward order (what ``nonfinite_grad`` and
    ``nonfinite_param`` index).
    """
    loss = float(metrics["loss"])
    g, p = int(metrics.get("nonfinite_grad", -1)), int(metrics.get("nonfinite_param", -1))

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else f"parameter #{i}"

    parts = [f"loss {loss:.4g}"] if not np.isfinite(loss) else []
    if g >= 0:
        parts.append(f"first non-finite gradient in {name(g)}")
    elif p >= 0:
        parts.append(f"gradients finite but the update made {name(p)} non-finite")
    elif np.isfinite(loss):
        parts.append("non-finite BatchNorm statistics")
    return f"step {step}: {', '.join(parts)} (lr {float(metrics['lr']):.3g})"
