"""The CPU-tuned formulations: what ``compute="auto"`` lowers on XLA:CPU, and nowhere else.

XLA:CPU runs some of the ops VGG produces far below its matmul speed: a 3×3 conv on a
2×2 map, the kernel gradient of a wide conv, ``select_and_scatter`` (the gradient of
``reduce_window`` max pooling), fc6 on a 1×1 map pooled up to 7×7. Each function here
computes the same values as the plain op of :mod:`vggjax.ops.xla` (up to float summation
order; ``tests/test_conv.py`` checks values and gradients) as large matmuls, slices and
elementwise selects, which XLA:CPU runs well:

* :func:`im2col_conv` — the patches of every kernel tap sliced out of the padded input,
  concatenated on the channel axis, and one matmul with the ``(kh·kw·C, O)`` kernel
  (taps that only read padding are dropped);
* :func:`row_im2col_conv` — im2col along the width only, one matmul with the kernel rows
  side by side, shifted adds (narrow layers on larger maps);
* :func:`tapgrad_conv` — ``lax.conv`` forward and input gradient, the kernel gradient as
  one large-K matmul per kernel tap;
* :func:`max_pool` — max pooling by argmax and select (the gradient is elementwise);
* :func:`pooled_linear` — adaptive pooling folded into fc6's kernel when it upsamples;
* :func:`sum_of_squares` — ``vdot(g, g)``, which reads a broadcast gradient in place.

:func:`choose` picks the conv formulation from static shapes and a
:class:`~vggjax.ops.policy.Policy`'s thresholds, so the choice costs nothing at run time.
Why each threshold is where it is: the per-layer profiles and A/B records in
``experiments/results/bench/`` (``python -m vggjax.bench --profile`` / ``--variant``).
On a GPU or TPU these rewrites would replace cuDNN's and the TPU's native convolution and
pooling, so :mod:`vggjax.ops` only lowers them for CPU (or when asked, ``compute="cpu"``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vggjax.ops import xla
from vggjax.ops.policy import Policy

Array = jax.Array
Pads = Sequence[tuple[int, int]]


def use_im2col(
    policy: Policy,
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    padding: Pads,
    in_channels: int | None = None,
    batch: int | None = None,
) -> bool:
    """im2col + one matmul: a kernel larger than 1×1 whose output map has ≤ ``im2col_max_pixels``
    pixels, whose matmul has ≤ ``im2col_max_rows`` rows (``batch`` × output pixels), or whose
    input has ≤ ``im2col_max_in_channels`` channels (the image layer).

    A 1×1 kernel is a matmul either way and XLA already treats it as one.
    """
    if tuple(kernel_hw) == (1, 1):
        return False
    out = [h + lo + hi - k + 1 for h, k, (lo, hi) in zip(in_hw, kernel_hw, padding)]
    if min(out) < 1:
        return False
    pixels = out[0] * out[1]
    return (
        pixels <= policy.im2col_max_pixels
        or (batch is not None and batch * pixels <= policy.im2col_max_rows)
        or (in_channels is not None and in_channels <= policy.im2col_max_in_channels)
    )


def use_row_im2col(policy: Policy, kernel_hw: Sequence[int], out_channels: int) -> bool:
    """Width-only im2col: a kernel larger than 1×1 with ≤ ``row_im2col_max_out_channels``
    outputs."""
    return tuple(kernel_hw) != (1, 1) and out_channels <= policy.row_im2col_max_out_channels


def use_tap_gradient(
    policy: Policy, in_hw: Sequence[int], kernel_hw: Sequence[int], out_channels: int
) -> bool:
    """Per-tap kernel gradient: maps of ≥ ``tapgrad_min_pixels`` pixels,
    ≥ ``tapgrad_min_out_channels`` outputs."""
    return (
        tuple(kernel_hw) != (1, 1)
        and in_hw[0] * in_hw[1] >= policy.tapgrad_min_pixels
        and out_channels >= policy.tapgrad_min_out_channels
    )


def choose(
    policy: Policy,
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    padding: Pads,
    in_channels: int,
    out_channels: int,
    batch: int,
) -> str:
    """The CPU formulation of a stride-1 NHWC conv of this shape.

    ``"im2col"``, ``"rows"`` (:func:`row_im2col_conv`), ``"tapgrad"`` or ``"lax_conv"``,
    tried in that order; ``padding`` is explicit ((top, bottom), (left, right)).
    """
    if use_im2col(policy, in_hw, kernel_hw, padding, in_channels, batch):
        return "im2col"
    if use_row_im2col(policy, kernel_hw, out_channels):
        return "rows"
    if use_tap_gradient(policy, in_hw, kernel_hw, out_channels):
        return "tapgrad"
    return "lax_conv"


def _geometry(x: Array, kernel: Array, padding: Pads) -> tuple[int, ...]:
    """``(N, H, W, C, kh, kw, O, oh, ow)`` of a stride-1 NHWC × HWIO conv with explicit padding."""
    n, h, w, c = x.shape
    kh, kw, kc, o = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, input has {c}")
    (pt, pb), (pl, pr) = padding
    return n, h, w, c, kh, kw, o, h + pt + pb - kh + 1, w + pl + pr - kw + 1


def _live_taps(size: int, k: int, lo: int, out: int) -> tuple[int, int]:
    """Kernel taps ``[first, last]`` along one axis that read at least one real (unpadded) pixel.

    Output position ``r`` reads padded position ``r + t``, i.e. input row ``r + t - lo``;
    tap ``t`` is live if some ``r`` in ``[0, out)`` puts that row inside ``[0, size)``.
    """
    first = max(0, lo - (out - 1))
    last = min(k - 1, lo + size - 1)
    return first, last


def im2col_conv(
    x: Array, kernel: Array, padding: Pads, precision: Any = None, pet: Any = None
) -> Array:
    """Stride-1 NHWC × HWIO convolution as patch extraction + one matmul.

    ``x``: ``(N, H, W, C)``; ``kernel``: ``(kh, kw, C, O)``; ``padding``: ((top, bottom),
    (left, right)). Returns ``(N, oh, ow, O)`` with ``oh = H + top + bottom - kh + 1``
    (likewise ``ow``). Taps that only read padding are skipped (on a 1×1 map a 3×3 conv is
    its centre tap alone), which also saves their FLOPs.
    """
    n, h, w, c, kh, kw, o, oh, ow = _geometry(x, kernel, padding)
    (pt, pb), (pl, pr) = padding
    i0, i1 = _live_taps(h, kh, pt, oh)
    j0, j1 = _live_taps(w, kw, pl, ow)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    cols = [xp[:, i : i + oh, j : j + ow, :] for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    k = kernel[i0 : i1 + 1, j0 : j1 + 1].reshape(-1, o)
    y = jnp.matmul(
        patches.reshape(n * oh * ow, -1),
        k,
        precision=precision,
        preferred_element_type=pet,
    )
    return y.reshape(n, oh, ow, o)


def row_im2col_conv(
    x: Array, kernel: Array, padding: Pads, precision: Any = None, pet: Any = None
) -> Array:
    """Stride-1 NHWC × HWIO convolution as im2col along the width only, one matmul, shifted adds.

    The ``kw`` horizontal taps are concatenated on the channel axis for every padded row
    (``(N, H+pt+pb, ow, kw·C)``, ``kw``× the input instead of full im2col's ``kh·kw``×) and
    multiplied in one matmul by all ``kh`` kernel rows side by side (``(kw·C, kh·O)``);
    output row ``r`` is the sum of column block ``i`` at padded row ``r + i``. It computes
    ``(H+pt+pb)/oh``× the FLOPs of the conv (6% more at 32×32).
    """
    n, h, w, c, kh, kw, o, oh, ow = _geometry(x, kernel, padding)
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    hp = h + pt + pb
    if kw > 1:
        rows = jnp.concatenate([xp[:, :, j : j + ow, :] for j in range(kw)], axis=-1)
    else:
        rows = xp[:, :, :ow, :]
    k = jnp.concatenate([kernel[i].reshape(kw * c, o) for i in range(kh)], axis=-1)  # (kw·C, kh·O)
    z = jnp.matmul(
        rows.reshape(n * hp * ow, kw * c),
        k,
        precision=precision,
        preferred_element_type=pet,
    )
    z = z.reshape(n, hp, ow, kh * o)
    return sum(z[:, i : i + oh, :, i * o : (i + 1) * o] for i in range(kh))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def tapgrad_conv(
    x: Array,
    kernel: Array,
    padding: tuple[tuple[int, int], ...],
    precision: Any = None,
    pet: Any = None,
) -> Array:
    """Stride-1 NHWC × HWIO conv: ``lax.conv`` forward and input gradient, kernel gradient by taps.

    The kernel gradient ``dK[i, j] = Σ_{n,h,w} x_pad[n, h+i, w+j, :]ᵀ · dy[n, h, w, :]`` is
    one ``(C × N·H·W) @ (N·H·W × O)`` matmul per tap — large-K matmuls that XLA:CPU runs
    well — instead of XLA's kernel-backprop convolution; accumulated in float32 whatever
    the dtype. ``padding`` is explicit; ``pet`` is the forward's ``preferred_element_type``.
    """
    return xla.conv_nhwc(x, kernel, padding, precision, pet)


def _tapgrad_fwd(x, kernel, padding, precision, pet):
    return xla.conv_nhwc(x, kernel, padding, precision, pet), (x, kernel)


def _tapgrad_bwd(padding, precision, pet, res, dy):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda x_: xla.conv_nhwc(x_, kernel, padding, precision, pet), x)
    (dx,) = vjp_x(dy)
    c = x.shape[3]
    kh, kw, _, o = kernel.shape
    oh, ow = dy.shape[1], dy.shape[2]
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    dy2 = dy.reshape(-1, o)
    taps = [
        lax.dot_general(
            xp[:, i : i + oh, j : j + ow, :].reshape(-1, c),
            dy2,
            (((0,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )
        for i in range(kh)
        for j in range(kw)
    ]
    dk = jnp.stack(taps).reshape(kh, kw, c, o).astype(kernel.dtype)
    return dx, dk


tapgrad_conv.defvjp(_tapgrad_fwd, _tapgrad_bwd)

# What choose() may return -> the conv, each called as (x, kernel, padding, precision, pet).
FORMULATIONS: dict[str, Callable[..., Array]] = {
    "im2col": im2col_conv,
    "rows": row_im2col_conv,
    "tapgrad": tapgrad_conv,
    "lax_conv": xla.conv_nhwc,
}


def conv(
    policy: Policy, x: Array, kernel: Array, padding: Pads, precision: Any = None, pet: Any = None
) -> Array:
    """A stride-1 NHWC × HWIO conv (explicit padding) in the formulation :func:`choose` picks."""
    kind = choose(
        policy, x.shape[1:3], kernel.shape[:2], padding, x.shape[3], kernel.shape[3], x.shape[0]
    )
    pads = tuple(map(tuple, padding))  # hashable: tapgrad's padding is a static argument
    return FORMULATIONS[kind](x, kernel, pads, precision, pet)


# Compiler options for a computation that runs once (the trainability check's probe): XLA:CPU's
# backend optimisations cost more compile time than they save on a single run.
RUN_ONCE_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}


def max_pool(x: Array, size: int = 2) -> Array:
    """2-D max pooling, window and stride ``size``, no padding, written without ``reduce_window``.

    The ``size²`` window positions are stacked on a new axis, the first maximum is picked
    with ``argmax`` and selected with ``where`` (odd trailing rows/columns are dropped, as
    torch floors). Same values and gradient as ``reduce_window`` — all of it to the first
    maximum of each window in row-major order, ties included — but the gradient is an
    elementwise select instead of XLA's ``select_and_scatter``.
    """
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    xw = x[:, : oh * size, : ow * size, :].reshape(n, oh, size, ow, size, c)
    xw = jnp.stack(
        [xw[:, :, i, :, j] for i in range(size) for j in range(size)], axis=3
    )  # (n, oh, ow, size², c)
    first = lax.stop_gradient(jnp.argmax(xw, axis=3, keepdims=True))
    pick = jnp.arange(size * size).reshape(1, 1, 1, -1, 1) == first
    return jnp.sum(jnp.where(pick, xw, jnp.zeros((), x.dtype)), axis=3)


def folds_pooled_linear(
    policy: Policy, in_hw: tuple[int, int], pool_size: tuple[int, int], batch: int
) -> bool:
    """Whether :func:`pooled_linear` folds the pooling into the kernel (a static choice).

    Folding costs one pass over the weights (``oh·h·ow + h·ow·w`` multiply-adds per
    ``C·K`` column) plus a matmul of the unpooled input; the direct route is a matmul of
    the pooled input, ``batch·oh·ow·C·K``. Folding wins when the pooling *upsamples* (a
    1×1 map pooled to 7×7: 48 of 49 fc6 rows see the same pixel), never when it shrinks.
    """
    (h, w), (oh, ow) = in_hw, pool_size
    if not policy.fold_pooled_linear or h * w >= oh * ow:
        return False
    return (oh * h * ow + h * ow * w) + batch * h * w < batch * oh * ow


def pooled_linear(
    x: Array, pool_size: tuple[int, int], kernel: Array, bias: Array | None, precision: Any = None
) -> Array:
    """:func:`vggjax.ops.xla.pooled_linear` with the averaging matrices applied to the kernel.

    ``(oh·ow·C, K) → (h·w·C, K)`` is the same linear map at a fraction of the FLOPs when
    the pooling upsamples: at 32×32 input VGG's fc6 becomes a ``512 × 4096`` matmul instead
    of ``25088 × 4096``. One ``(h·w × oh·ow) @ (oh·ow × C·K)`` matmul folds both averaging
    matrices, so its gradient is written straight in the kernel's layout.
    """
    oh, ow = pool_size
    n, h, w, c = x.shape
    fold = np.kron(xla.adaptive_matrix(h, oh), xla.adaptive_matrix(w, ow)).T  # (h·w, oh·ow)
    k_eff = jnp.matmul(
        jnp.asarray(fold, kernel.dtype),
        kernel.reshape(oh * ow, -1),
        precision=lax.Precision.HIGHEST,
    )
    y = jnp.matmul(x.reshape(n, -1), k_eff.reshape(h * w * c, -1), precision=precision)
    return y if bias is None else y + bias


def sum_of_squares(x: Array) -> Array:
    """``Σ x²`` in float32 as ``vdot(x, x)``.

    fc6's gradient under the folded pooling is a broadcast of a 49× smaller array; XLA:CPU
    fuses that broadcast into the optimizer update but writes it out in full before a
    ``reduce``, while the dot reads it in place.
    """
    return jnp.vdot(x, x, preferred_element_type=jnp.float32)
