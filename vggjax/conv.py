"""Convolution formulation chosen per layer shape, at trace time.

XLA:CPU's ``lax.conv`` is slow on some shapes that VGG produces at small image sizes:
forward + backward of a 3×3 SAME conv on a ``64×2×2×512`` input (VGG's last stage at
32×32) runs at a few GFLOP/s, while the same layer written as *im2col + one matmul*
runs near the machine's matmul speed (see ``experiments/results/bench/``). Here the
patches of every kernel tap are sliced out of the padded input and concatenated along
the channel axis, so a ``(kh, kw, C, O)`` HWIO kernel reshaped to ``(kh·kw·C, O)`` is the
matmul's right operand — no parameter changes layout. Taps that only ever read padding
(all but the centre tap of a 3×3 conv on a 1×1 map) are dropped, which also saves their
FLOPs. Gradients come from JAX's autodiff of slices, concatenation and a matmul, all of
which XLA:CPU handles well.

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature and is passed
to ``nnx.Conv(conv_general_dilated=...)`` by :func:`vggjax.layers.conv`; it picks the
formulation from static shapes only (:func:`choose`, over :func:`use_im2col`,
:func:`use_row_im2col` and :func:`use_tap_gradient`), so there is no runtime cost. Narrow layers (≤ 64 output
channels, VGG's conv1_2) on larger maps use :func:`row_im2col_conv`: im2col along the
width only and one matmul with the kernel rows side by side. On larger maps with ≥128 output channels the forward and input
gradient stay ``lax.conv`` but the kernel gradient — XLA:CPU's slowest part of a conv's
backward pass there — is computed as one matmul per kernel tap (:func:`tapgrad_conv`).
Anything it does not handle (strides, dilation, groups, other layouts) goes to
``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

# Where im2col beats lax.conv, from the per-layer profile (vggjax.bench --profile) and
# interleaved fwd+bwd timings (median of 11-15): always on output maps of ≤ 4 pixels (by
# 30-40× at 2×2), and whenever the matmul has ≤ IM2COL_MAX_ROWS rows (batch × output
# pixels) — VGG-16's 4×4 layers at batch 64 (42 vs 52 ms, 84 vs 109 ms), 14×14 and 7×7 at
# batch 8 (63 vs 75, 132 vs 148, 28 vs 42 ms) — while at 8×8 × batch 64 (4096 rows)
# lax.conv wins (86 vs 100 ms). Under mesh-jit the batch seen here is the global one.
IM2COL_MAX_PIXELS = 4
IM2COL_MAX_ROWS = 2048
# ... and for the image layer (3 RGB or 1 grey input channels): lax.conv's gradient of a
# conv with a tiny input-channel count runs at ~16 GFLOP/s, im2col (K = 9·C) about twice that.
IM2COL_MAX_IN_CHANNELS = 4

# Where the kernel gradient is computed as one matmul per kernel tap instead of XLA's
# kernel-backprop convolution (3-4x slower than the forward conv on these shapes): maps of
# at least this many pixels with at least this many output channels. Narrow 64→64 layers
# are faster with lax.conv or rows, per the per-layer profile. On 8×8 maps (VGG-16's
# conv3_x at 32×32) the layer alone is even either way (lax.conv 98-101 vs tapgrad
# 99-113 ms), but inside the whole step XLA ran two of their kernel-backprop convolutions
# at 103 and 136 ms (op profile at fd3472b) and the step is faster with tapgrad: the bench's A/B
# (``--variant old_tapgrad:conv.TAPGRAD_MIN_PIXELS=256``, experiments/results/bench/).
TAPGRAD_MIN_PIXELS = 64
TAPGRAD_MIN_OUT_CHANNELS = 128

# Narrow layers (≤ this many output channels, e.g. VGG's 64→64 conv1_2) on maps too big for
# im2col use :func:`row_im2col_conv`: fwd+bwd 197 vs 310 ms (lax.conv) at 64×32×32×64 and
# 302 vs 435 ms at 8×112×112×64, interleaved medians of 7. On wider layers the per-tap
# kernel gradient or lax.conv is faster (e.g. 8×56×56×128→128: tapgrad 206, rows 227 ms).
ROW_IM2COL_MAX_OUT_CHANNELS = 64

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    """True when ``dimension_numbers`` describe NHWC inputs, HWIO kernels and NHWC outputs."""
    if ndim != 4:
        return False
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        # Flax passes specs as permutations: NHWC lhs = (0, 3, 1, 2), HWIO rhs = (3, 2, 0, 1).
        return (
            tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
        )
    return tuple(dimension_numbers) == _NHWC


def explicit_padding(padding: Padding, in_hw: Sequence[int], kernel_hw: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``padding`` ("SAME", "VALID" or ((lo, hi), (lo, hi))) as explicit (lo, hi) pairs for stride 1."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), (1, 1), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def use_im2col(
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    padding: Sequence[tuple[int, int]],
    in_channels: int | None = None,
    batch: int | None = None,
) -> bool:
    """The static choice: im2col + matmul when the output map has ≤ :data:`IM2COL_MAX_PIXELS` pixels,
    when ``batch`` × output pixels ≤ :data:`IM2COL_MAX_ROWS`, or when the input has
    ≤ :data:`IM2COL_MAX_IN_CHANNELS` channels (the image layer).

    A 1×1 kernel is a plain matmul either way and XLA already treats it as one, so only
    kernels larger than 1×1 are rewritten.
    """
    if tuple(kernel_hw) == (1, 1):
        return False
    out = [h + lo + hi - k + 1 for h, k, (lo, hi) in zip(in_hw, kernel_hw, padding)]
    if min(out) < 1:
        return False
    pixels = out[0] * out[1]
    return (
        pixels <= IM2COL_MAX_PIXELS
        or (batch is not None and batch * pixels <= IM2COL_MAX_ROWS)
        or (in_channels is not None and in_channels <= IM2COL_MAX_IN_CHANNELS)
    )


def use_tap_gradient(in_hw: Sequence[int], kernel_hw: Sequence[int], out_channels: int) -> bool:
    """The static choice of :func:`tapgrad_conv` (lax.conv forward, per-tap matmul kernel gradient)."""
    return (
        tuple(kernel_hw) != (1, 1)
        and in_hw[0] * in_hw[1] >= TAPGRAD_MIN_PIXELS
        and out_channels >= TAPGRAD_MIN_OUT_CHANNELS
    )


def choose(
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    padding: Sequence[tuple[int, int]],
    in_channels: int,
    out_channels: int,
    batch: int,
) -> str:
    """The formulation :func:`conv_general_dilated` uses for a stride-1 NHWC conv of this shape.

    ``"im2col"``, ``"rows"`` (:func:`row_im2col_conv`), ``"tapgrad"`` or ``"lax_conv"``,
    tried in that order; ``padding`` is explicit ((top, bottom), (left, right)).
    """
    if use_im2col(in_hw, kernel_hw, padding, in_channels, batch):
        return "im2col"
    if use_row_im2col(kernel_hw, out_channels):
        return "rows"
    if use_tap_gradient(in_hw, kernel_hw, out_channels):
        return "tapgrad"
    return "lax_conv"


def _geometry(x: Array, kernel: Array, padding: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """``(N, H, W, C, kh, kw, O, oh, ow)`` of a stride-1 NHWC × HWIO conv with explicit padding."""
    n, h, w, c = x.shape
    kh, kw, kc, o = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, input has {c}")
    (pt, pb), (pl, pr) = padding
    return n, h, w, c, kh, kw, o, h + pt + pb - kh + 1, w + pl + pr - kw + 1


def use_row_im2col(kernel_hw: Sequence[int], out_channels: int) -> bool:
    """The static choice of :func:`row_im2col_conv`: kernels wider than 1×1 with ≤ :data:`ROW_IM2COL_MAX_OUT_CHANNELS` outputs."""
    return tuple(kernel_hw) != (1, 1) and out_channels <= ROW_IM2COL_MAX_OUT_CHANNELS


def row_im2col_conv(
    x: Array,
    kernel: Array,
    padding: Sequence[tuple[int, int]],
    *,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """Stride-1 NHWC × HWIO convolution as im2col along the width only, one matmul, shifted adds.

    The ``kw`` horizontal taps are concatenated on the channel axis for every padded row
    (``(N, H+pt+pb, ow, kw·C)``, ``kw``× the input instead of full im2col's ``kh·kw``×),
    and multiplied in one matmul by all ``kh`` kernel rows side by side
    (``(kw·C, kh·O)``); output row ``r`` is then the sum of column block ``i`` at padded
    row ``r + i``. For narrow layers the ``kh·O``-wide matmul runs far better than XLA:CPU's
    convolution (see :data:`ROW_IM2COL_MAX_OUT_CHANNELS`); it computes ``(H+pt+pb)/oh``×
    the FLOPs (6% more at 32×32). Same values as ``lax.conv_general_dilated`` up to float
    summation order; gradients by autodiff (slices, concatenation, one matmul).
    """
    n, h, w, c, kh, kw, o, oh, ow = _geometry(x, kernel, padding)
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    hp = h + pt + pb
    rows = jnp.concatenate([xp[:, :, j : j + ow, :] for j in range(kw)], axis=-1) if kw > 1 else xp[:, :, :ow, :]
    k = jnp.concatenate([kernel[i].reshape(kw * c, o) for i in range(kh)], axis=-1)  # (kw·C, kh·O)
    z = jnp.matmul(rows.reshape(n * hp * ow, kw * c), k, precision=precision, preferred_element_type=preferred_element_type)
    z = z.reshape(n, hp, ow, kh * o)
    return sum(z[:, i : i + oh, :, i * o : (i + 1) * o] for i in range(kh))


def _lax_conv(x: Array, kernel: Array, padding: tuple[tuple[int, int], ...], precision: Any, pet: Any) -> Array:
    return lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=_NHWC, precision=precision, preferred_element_type=pet
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def tapgrad_conv(x: Array, kernel: Array, padding: tuple[tuple[int, int], ...], precision: Any = None, pet: Any = None) -> Array:
    """Stride-1 NHWC × HWIO conv: ``lax.conv`` forward and input gradient, kernel gradient by taps.

    The kernel gradient ``dK[i, j] = Σ_{n,h,w} x_pad[n, h+i, w+j, :]ᵀ · dy[n, h, w, :]`` is
    one ``(C × N·H·W) @ (N·H·W × O)`` matmul per tap — large-K matmuls that XLA:CPU runs
    well — rather than XLA's kernel-backprop convolution. Same values as ``lax.conv``'s
    gradient up to float summation order; accumulated in float32 whatever the dtype.
    ``padding`` is explicit ((top, bottom), (left, right)); ``pet`` is the
    ``preferred_element_type`` of the forward conv.
    """
    return _lax_conv(x, kernel, padding, precision, pet)


def _tapgrad_fwd(x, kernel, padding, precision, pet):
    return _lax_conv(x, kernel, padding, precision, pet), (x, kernel)


def _tapgrad_bwd(padding, precision, pet, res, dy):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda x_: _lax_conv(x_, kernel, padding, precision, pet), x)
    (dx,) = vjp_x(dy)
    n, h, w, c = x.shape
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


def _live_taps(size: int, k: int, lo: int, out: int) -> tuple[int, int]:
    """Kernel taps ``[first, last]`` along one axis that read at least one real (unpadded) pixel.

    Output position ``r`` reads padded position ``r + t``, i.e. input row ``r + t - lo``;
    tap ``t`` is live if some ``r`` in ``[0, out)`` puts that row inside ``[0, size)``.
    """
    first = max(0, lo - (out - 1))
    last = min(k - 1, lo + size - 1)
    return first, last


def im2col_conv(
    x: Array,
    kernel: Array,
    padding: Sequence[tuple[int, int]],
    *,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """Stride-1 NHWC × HWIO convolution as patch extraction + one matmul.

    ``x``: ``(N, H, W, C)``; ``kernel``: ``(kh, kw, C, O)``; ``padding``: ((top, bottom),
    (left, right)). Returns ``(N, oh, ow, O)`` with ``oh = H + top + bottom - kh + 1``
    (likewise ``ow``) — the same values as ``lax.conv_general_dilated`` up to float
    summation order. Taps that only read padding are skipped.
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
        patches.reshape(n * oh * ow, -1), k, precision=precision, preferred_element_type=preferred_element_type
    )
    return y.reshape(n, oh, ow, o)


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> Array:
    """Drop-in for ``lax.conv_general_dilated`` that uses :func:`im2col_conv` where it is faster.

    The decision (:func:`use_im2col`) reads only static shapes, strides, dilations and
    layouts; every case other than a stride-1, undilated, ungrouped NHWC/HWIO conv with
    a small output map is passed to ``lax.conv_general_dilated`` with the same arguments.
    """
    ones = (1,) * (lhs.ndim - 2)
    simple = (
        _is_nhwc_hwio(dimension_numbers, lhs.ndim)
        and tuple(window_strides) == ones
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and batch_group_count == 1
        and kwargs.get("out_sharding") is None
    )
    if simple:
        pads = explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2])
        kind = choose(lhs.shape[1:3], rhs.shape[:2], pads, lhs.shape[3], rhs.shape[3], lhs.shape[0])
        if kind == "im2col":
            return im2col_conv(lhs, rhs, pads, precision=precision, preferred_element_type=preferred_element_type)
        if kind == "rows":
            return row_im2col_conv(lhs, rhs, pads, precision=precision, preferred_element_type=preferred_element_type)
        if kind == "tapgrad":
            return tapgrad_conv(lhs, rhs, pads, precision, preferred_element_type)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )
