"""Helpers shared by the reference-case networks: feature recording, the output, the book's
layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import layers
from vggjax.errors import ShapeError
from vggjax.ops import Policy

Array = jax.Array


def rec(feats: dict, name: str, x: Array) -> Array:
    """Record ``x`` under ``name`` in ``feats`` (the forward's ordered dict of intermediates) and
    return it."""
    feats[name] = x
    return x


def output(logits: Array, feats: dict, return_features: bool):
    """float32 logits, with ``feats`` when asked (the ``return_features`` convention of every
    vggjax model)."""
    logits = logits.astype(jnp.float32)
    return (logits, feats) if return_features else logits


def flatten(x: Array, feats: dict, *, expected: int, name: str, why: str) -> Array:
    """Flatten NHWC ``x`` to ``(N, h·w·c)``; the fc1 width is fixed, so check it."""
    n = x.shape[1] * x.shape[2] * x.shape[3]
    if n != expected:
        raise ShapeError(
            f"{name} expects 32x32 inputs ({why} = {expected} features for fc1), got {n} features"
        )
    return rec(feats, "flatten", x.reshape(x.shape[0], n))


def conv3(cin: int, cout: int, kw: dict, compute: Policy, *, use_bias: bool = True) -> nnx.Conv:
    """The book's ``nn.Conv2d(cin, cout, kernel_size=3, padding=1)``."""
    return layers.conv(cin, cout, 3, padding=1, use_bias=use_bias, compute=compute, **kw)


def batch_norm(c: int, kw: dict) -> nnx.BatchNorm:
    # PyTorch BatchNorm2d defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
    return layers.batch_norm(c, momentum=0.9, epsilon=1e-5, **kw)
