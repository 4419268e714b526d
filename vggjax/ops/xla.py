"""The plain XLA ops: what GPU and TPU users run (``compute="auto"`` off CPU, or ``compute="xla"``).

Each is the op a reader expects — ``lax.conv_general_dilated`` (its gradients are
autodiff's own transposed convolutions, which cuDNN and the TPU run natively),
``lax.reduce_window`` max pooling, adaptive average pooling then the Linear layer, and
``sum(square(g))``. They are also the reference the CPU formulations of
:mod:`vggjax.ops.cpu` are tested against, and the program whose FLOPs count as the
model's (``python -m vggjax.bench``'s MFU).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

NHWC = ("NHWC", "HWIO", "NHWC")


def conv_nhwc(
    x: Array,
    kernel: Array,
    padding: Sequence[tuple[int, int]],
    precision: Any = None,
    pet: Any = None,
) -> Array:
    """Stride-1 NHWC × HWIO ``lax.conv_general_dilated`` with explicit padding; ``pet``:
    preferred_element_type."""
    return lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        tuple(map(tuple, padding)),
        dimension_numbers=NHWC,
        precision=precision,
        preferred_element_type=pet,
    )


def max_pool(x: Array, size: int = 2) -> Array:
    """2-D max pooling with window and stride ``size`` and no padding (torch
    ``MaxPool2d(size)``), by ``reduce_window``."""
    # A Python scalar init lets JAX see the (max, -inf) monoid and use reduce_window_max,
    # which has a JVP; an array init would be the generic reduce_window, which has none.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, size, size, 1), "VALID")


@functools.lru_cache(maxsize=None)
def adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) averaging matrix with PyTorch's adaptive-pool windows.

    Window i covers ``[floor(i*in/out), ceil((i+1)*in/out))`` — exactly what
    ``torch.nn.functional.adaptive_avg_pool2d`` uses, including sizes that do not divide
    and outputs larger than the input (then windows overlap and repeat pixels).
    """
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, output_size: int | tuple[int, int]) -> Array:
    """Average-pool an NHWC tensor ``x`` to spatial size ``output_size`` (torch semantics).

    Separable along H and W, so it is two small matrix products; when the input already
    has the output size it is returned unchanged (a no-op, as in torch).
    Shapes: ``(N, H, W, C) -> (N, oh, ow, C)``.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, h, w, _ = x.shape
    if (h, w) == (oh, ow):
        return x
    ph = jnp.asarray(adaptive_matrix(h, oh), x.dtype)
    pw = jnp.asarray(adaptive_matrix(w, ow), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", ph, x, pw, precision=lax.Precision.HIGHEST)


def pooled_linear(
    x: Array, pool_size: tuple[int, int], kernel: Array, bias: Array | None, precision: Any = None
) -> Array:
    """``adaptive_avg_pool(x, pool_size).reshape(N, -1) @ kernel + bias``: torchvision's
    avgpool → flatten → fc6.

    ``x``: ``(N, h, w, C)``; ``kernel``: ``(oh·ow·C, K)`` in (h, w, c) flatten order; returns
    ``(N, K)``.
    """
    pooled = adaptive_avg_pool(x, pool_size)
    y = jnp.matmul(pooled.reshape(x.shape[0], -1), kernel, precision=precision)
    return y if bias is None else y + bias


def sum_of_squares(x: Array) -> Array:
    """``Σ x²`` accumulated in float32."""
    return jnp.sum(jnp.square(x), dtype=jnp.float32)
