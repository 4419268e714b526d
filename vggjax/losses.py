"""Losses and metrics, with PyTorch's definitions and reductions.

Every function takes channels-last logits ``(..., C)`` with any leading shape, e.g.
``(N, C)`` for classification or ``(N, H, W, C)`` for per-pixel classification, and an
optional ``mask`` over the leading shape (1 = count, 0 = ignore; a shorter mask such as a
per-example ``(N,)`` is broadcast over the trailing leading axes). Reductions are means
over the valid elements, computed in float32 whatever the logits' dtype, and an all-zero
mask gives 0 rather than NaN (so padded batches in data-parallel training are safe).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vggjax.errors import ShapeError, one_of


def _f32(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if x.dtype != jnp.float64 else x


def _masked_mean(values: jax.Array, mask: ArrayLike | None) -> jax.Array:
    """Mean of ``values`` over the entries where ``mask`` is non-zero (0 if there are none)."""
    if mask is None:
        return jnp.mean(values)
    mask = jnp.asarray(mask, values.dtype)
    if mask.shape != values.shape[: mask.ndim]:
        raise ShapeError(
            f"mask shape {mask.shape} must be a prefix of the leading shape {values.shape}; "
            "pass one weight per example (or per pixel)"
        )
    mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, values.shape)
    total = jnp.sum(mask)
    return jnp.where(total > 0, jnp.sum(values * mask) / jnp.where(total > 0, total, 1.0), 0.0)


def _int_labels(logits: ArrayLike, labels: ArrayLike, fn: str) -> tuple[jax.Array, jax.Array]:
    """float32 ``logits`` and integer ``labels`` of ``fn``'s shapes, or a ShapeError."""
    logits, labels = _f32(logits), jnp.asarray(labels)
    if labels.shape != logits.shape[:-1]:
        raise ShapeError(
            f"{fn}: labels shape {labels.shape} must equal logits shape {logits.shape} "
            "without its last (class) axis; logits are channels-last"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ShapeError(f"{fn}: labels must be integer class ids, got dtype {labels.dtype}")
    return logits, labels


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    mask: ArrayLike | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Mean softmax cross-entropy of ``logits (..., C)`` against integer ``labels (...)``.

    Equals ``torch.nn.functional.cross_entropy(logits, labels,
    label_smoothing=label_smoothing)`` (mean reduction) with torch's class axis moved
    last: ``(N, C)`` vs ``(N,)``, or ``(N, H, W, C)`` vs ``(N, H, W)`` for torch's
    ``(N, C, H, W)``. Returns a float32 scalar (nats per valid element).
    """
    logits, labels = _int_labels(logits, labels, "softmax_cross_entropy")
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return _masked_mean(nll, mask)


def multilabel_soft_margin(
    logits: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None
) -> jax.Array:
    """Multi-label soft-margin loss of ``logits (..., C)`` against 0/1 ``targets (..., C)``.

    Equals ``torch.nn.functional.multilabel_soft_margin_loss``: per example
    ``-mean_c[y·log σ(x) + (1−y)·log σ(−x)]``, then the mean over examples (``mask``
    selects examples). Uses ``log_sigmoid``, so it stays finite for huge logits;
    all-zero logits give ln 2. Returns a float32 scalar.
    """
    logits, targets = _f32(logits), _f32(targets)
    if targets.shape != logits.shape:
        raise ShapeError(
            f"multilabel_soft_margin: targets shape {targets.shape} must equal logits shape "
            f"{logits.shape} (one 0/1 target per class)"
        )
    per_class = targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits)
    return _masked_mean(-jnp.mean(per_class, axis=-1), mask)


def l2_penalty(params: Any, lam: float, mask: str = "all") -> jax.Array:
    """Return ``lam · Σ w²`` summed over every array leaf of ``params`` (float32 scalar).

    The book's (*Deep Learning with PyTorch*, ch. 8) penalty added to the loss; its
    gradient ``2·lam·w`` makes it equal to coupled SGD ``weight_decay = 2·lam``.
    ``mask`` is a :func:`vggjax.optim.decay_mask` mode ("all" or "no_bias_norm").
    ``params`` may be a dict of arrays or an ``nnx.State``.
    """
    from vggjax.optim import decay_mask  # local: optim does not import losses either

    keep = jax.tree.leaves(decay_mask(params, mask))
    leaves = jax.tree.leaves(params)
    total = sum(
        (jnp.sum(_f32(w) ** 2) for w, k in zip(leaves, keep) if k), jnp.zeros((), jnp.float32)
    )
    return lam * total


def accuracy(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, k: int = 1
) -> jax.Array:
    """Fraction (float32 scalar in [0, 1]) of valid elements whose label is in the top ``k``.

    ``logits (..., C)``, integer ``labels (...)``; ``k=1`` is plain accuracy (ties go
    to the lowest class index, as ``argmax``).
    """
    logits, labels = _int_labels(logits, labels, "accuracy")
    if k == 1:
        hit = jnp.argmax(logits, axis=-1) == labels
    else:
        _, top = jax.lax.top_k(logits, k)
        hit = jnp.any(top == labels[..., None], axis=-1)
    return _masked_mean(hit.astype(jnp.float32), mask)


def multilabel_accuracy(
    logits: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None, threshold: float = 0.0
) -> jax.Array:
    """Fraction of (example, class) decisions that are right: ``logit > threshold`` vs target.

    ``threshold=0`` on logits is probability 0.5. ``mask`` selects examples. Float32 scalar.
    """
    logits, targets = _f32(logits), _f32(targets)
    hit = (logits > threshold) == (targets > 0.5)
    return _masked_mean(jnp.mean(hit.astype(jnp.float32), axis=-1), mask)


def _average_precision(scores: jax.Array, positive: jax.Array) -> jax.Array:
    """AP of one class, as sklearn's ``average_precision_score`` (ties share a threshold)."""
    order = jnp.argsort(-scores)
    s, tp = scores[order], positive[order]
    cum_tp = jnp.cumsum(tp)
    # Last index of each run of equal scores: precision is read where the threshold is.
    group_end = jnp.searchsorted(-s, -s, side="right") - 1
    precision = cum_tp[group_end] / (group_end + 1).astype(jnp.float32)
    n_pos = jnp.sum(tp)
    return jnp.sum(tp * precision) / jnp.maximum(n_pos, 1.0)


def mean_average_precision(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None
) -> jax.Array:
    """Mean over classes of the average precision (the PASCAL VOC multi-label metric).

    ``scores (N, C)`` (logits or probabilities; only the order matters), 0/1 ``targets
    (N, C)``; ``mask`` of shape ``(N,)`` or ``(N, C)`` drops examples or single (example,
    class) entries (e.g. VOC "difficult"). Per-class AP equals sklearn's
    ``average_precision_score``; classes with no positive are left out of the mean
    (NaN if no class has one). Jittable; float32 scalar.
    """
    scores, targets = _f32(scores), _f32(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ShapeError(
            f"mean_average_precision: scores {scores.shape} and targets {targets.shape} must "
            "both be (N, C)"
        )
    positive = (targets > 0.5).astype(jnp.float32)
    if mask is not None:
        m = jnp.asarray(mask, bool)
        m = jnp.broadcast_to(m.reshape(m.shape + (1,) * (2 - m.ndim)), scores.shape)
        scores = jnp.where(m, scores, -jnp.inf)
        positive = positive * m
    ap = jax.vmap(_average_precision, in_axes=(1, 1))(scores, positive)
    has_pos = jnp.sum(positive, axis=0) > 0
    return jnp.sum(jnp.where(has_pos, ap, 0.0)) / jnp.sum(has_pos)


LossFn = Callable[..., jax.Array]

LOSSES: dict[str, LossFn] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "multilabel_soft_margin": multilabel_soft_margin,
}


def get_loss(name: str) -> LossFn:
    """Return the loss function registered under ``name`` (see :data:`LOSSES`).

    Each takes ``(logits, labels_or_targets, mask=None)`` and returns a float32 scalar.
    Raises :class:`~vggjax.errors.ConfigError` listing the valid names otherwise.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise one_of("loss", name, LOSSES) from None


__all__ = [
    "LOSSES",
    "accuracy",
    "get_loss",
    "l2_penalty",
    "mean_average_precision",
    "multilabel_accuracy",
    "multilabel_soft_margin",
    "softmax_cross_entropy",
]
