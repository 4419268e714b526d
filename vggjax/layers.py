"""Building blocks shared by every network: torch-exact adaptive pooling, max pooling,
and the conv → (BatchNorm) → activation block.

All tensors are NHWC. Layers here create their parameters with cheap zero initialisers;
the real initialisation is applied afterwards by :func:`vggjax.initializers.apply`, which
sees every layer's path and so can honour per-layer overrides.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax import conv as conv_lib
from vggjax.errors import ShapeError

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array] | None] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "none": None,
}


def activation(name: str | None) -> Callable[[Array], Array] | None:
    """Return the activation function called ``name`` (``"relu"``, ``"tanh"``, ``"none"``/None)."""
    from vggjax.errors import one_of

    key = "none" if name is None else name
    if key not in ACTIVATIONS:
        raise one_of("activation", name, ACTIVATIONS)
    return ACTIVATIONS[key]


@functools.lru_cache(maxsize=None)
def _adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
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

    Separable along H and W, so it is computed as two small matrix products; when the
    input already has the output size it is returned unchanged (a no-op, as in torch).
    Shapes: ``(N, H, W, C) -> (N, oh, ow, C)``.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, h, w, _ = x.shape
    if (h, w) == (oh, ow):
        return x
    ph = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
    pw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", ph, x, pw, precision=jax.lax.Precision.HIGHEST)


# Switch for benchmarks (``python -m vggjax.bench --plain``): False computes pool then fc6.
FOLD_POOLED_LINEAR = True


def pooled_linear_fold(in_hw: tuple[int, int], pool_size: tuple[int, int], batch: int) -> bool:
    """Whether :func:`pooled_linear` folds the pooling into the weights (a static choice).

    Folding costs one pass over the weights (``oh·h·ow + h·ow·w`` multiply-adds per
    ``C·K`` column, separable) plus a matmul of the unpooled input; the direct route is a
    matmul of the pooled input, ``batch·oh·ow·C·K``. Folding wins when the pooling
    *upsamples* — VGG's 1×1 map at 32×32 pooled to 7×7, where 48 of 49 fc6 rows see the
    same pixel — and never when it shrinks the map.
    """
    (h, w), (oh, ow) = in_hw, pool_size
    if not FOLD_POOLED_LINEAR or h * w >= oh * ow:
        return False
    fold = (oh * h * ow + h * ow * w) + batch * h * w
    return fold < batch * oh * ow


def pooled_linear(
    x: Array, pool_size: int | tuple[int, int], kernel: Array, bias: Array | None, *, precision=None
) -> Array:
    """``adaptive_avg_pool(x, pool_size).reshape(N, -1) @ kernel + bias``, computed the cheaper way.

    ``x``: ``(N, h, w, C)``; ``kernel``: ``(oh·ow·C, K)`` in (h, w, c) flatten order (an
    ``nnx.Linear`` after torchvision's ``AdaptiveAvgPool2d``); returns ``(N, K)``. When
    the pooling upsamples (:func:`pooled_linear_fold`), the averaging matrices are applied
    to the kernel instead of the input — ``(oh·ow·C, K) → (h·w·C, K)`` — which is the same
    linear map (up to float summation order) at a fraction of the FLOPs: at 32×32 input
    VGG's fc6 becomes a ``512 × 4096`` matmul instead of ``25088 × 4096``.
    """
    oh, ow = (pool_size, pool_size) if isinstance(pool_size, int) else pool_size
    n, h, w, c = x.shape
    if pooled_linear_fold((h, w), (oh, ow), n):
        # One (h·w × oh·ow) @ (oh·ow × C·K) matmul folds both averaging matrices into the
        # kernel; its gradient is the transposed matmul, written straight in the kernel's
        # layout (two einsums would add a kernel-sized transpose copy to every step).
        fold = np.kron(_adaptive_matrix(h, oh), _adaptive_matrix(w, ow)).T  # (h·w, oh·ow)
        k_eff = jnp.matmul(jnp.asarray(fold, kernel.dtype), kernel.reshape(oh * ow, -1), precision=jax.lax.Precision.HIGHEST)
        y = jnp.matmul(x.reshape(n, -1), k_eff.reshape(h * w * c, -1), precision=precision)
    else:
        pooled = adaptive_avg_pool(x, (oh, ow))
        y = jnp.matmul(pooled.reshape(n, -1), kernel, precision=precision)
    return y if bias is None else y + bias


# Switch for benchmarks (``python -m vggjax.bench --plain``): False uses nnx.max_pool (reduce_window).
FAST_MAX_POOL = True


def max_pool(x: Array, size: int = 2) -> Array:
    """2-D max pooling with window and stride ``size`` and no padding (torch ``MaxPool2d(size)``).

    Written without ``reduce_window``: the ``size²`` window positions are stacked on a new
    axis, the first maximum is picked with ``argmax`` and selected with ``where`` (odd
    trailing rows/columns are dropped, as torch floors). Same values and the same gradient
    as ``nnx.max_pool`` — all of it to the first maximum of each window in row-major order,
    ties included — but the gradient is an elementwise select instead of XLA's
    ``select_and_scatter``, 2-4× faster on XLA:CPU at VGG's shapes.
    """
    if not FAST_MAX_POOL:
        return nnx.max_pool(x, (size, size), strides=(size, size), padding="VALID")
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    xw = x[:, : oh * size, : ow * size, :].reshape(n, oh, size, ow, size, c)
    xw = jnp.stack([xw[:, :, i, :, j] for i in range(size) for j in range(size)], axis=3)  # (n, oh, ow, size², c)
    first = jax.lax.stop_gradient(jnp.argmax(xw, axis=3, keepdims=True))
    pick = jnp.arange(size * size).reshape(1, 1, 1, -1, 1) == first
    return jnp.sum(jnp.where(pick, xw, jnp.zeros((), x.dtype)), axis=3)


def check_input(x: Array, *, channels: int, min_size: int, name: str, why: str) -> None:
    """Raise :class:`ShapeError` if ``x`` is not NHWC with ``channels`` channels and H, W ≥ ``min_size``."""
    if x.ndim != 4:
        raise ShapeError(
            f"{name} expects NHWC images of shape (N, H, W, {channels}), got shape {tuple(x.shape)}"
        )
    _, h, w, c = x.shape
    if c != channels:
        raise ShapeError(
            f"{name} expects {channels} input channels (NHWC, shape (N, H, W, {channels})), got shape "
            f"{tuple(x.shape)}; transpose NCHW inputs or build the model with in_channels={c}"
        )
    if h < min_size or w < min_size:
        raise ShapeError(
            f"{name} needs inputs of at least {min_size}x{min_size} ({why}), got {h}x{w}"
        )


def conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    padding: str | int = "SAME",
    use_bias: bool = True,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """An ``nnx.Conv`` with zero-initialised parameters (see module docstring).

    ``padding`` is "SAME", "VALID" or an int p meaning torch's ``padding=p`` on both sides.
    The convolution itself is :func:`vggjax.conv.conv_general_dilated`, which picks
    im2col + matmul or ``lax.conv`` from the layer's static shape (faster on XLA:CPU for
    tiny feature maps); the parameters are the usual ``nnx.Conv`` HWIO ``kernel`` and ``bias``.
    """
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        padding=pad,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.zeros_init(),
        bias_init=nnx.initializers.zeros_init(),
        conv_general_dilated=conv_lib.conv_general_dilated,
        rngs=rngs,
    )


def linear(
    in_f: int, out_f: int, *, use_bias: bool = True, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.Linear:
    """An ``nnx.Linear`` with zero-initialised parameters (see module docstring)."""
    return nnx.Linear(
        in_f,
        out_f,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.zeros_init(),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def batch_norm(
    features: int,
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """BatchNorm over the channel axis.

    ``momentum`` follows Flax (running = momentum·running + (1-momentum)·batch), so
    PyTorch's default ``momentum=0.1`` is 0.9 here and PyTorch's ``momentum=0`` (running
    statistics never change) is 1.0. In training mode it normalises with batch statistics,
    in eval mode with the running ones.
    """
    return nnx.BatchNorm(
        features,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
