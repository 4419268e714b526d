"""The ops vggjax's models and train step call, dispatched by an explicit compute :class:`Policy`.

Models never call a formulation directly: a conv layer gets ``conv_general_dilated=Conv(policy)``,
a max pool calls ``max_pool(x, policy=policy)``, the fc head ``pooled_linear(...)``, the
train step ``sums_of_squares(...)``. Each of these looks at the policy:

* ``"xla"`` — the plain op (:mod:`vggjax.ops.xla`);
* ``"cpu"`` — the CPU formulation (:mod:`vggjax.ops.cpu`);
* ``"auto"`` — both, staged with ``lax.platform_dependent``: the lowering for CPU keeps
  the CPU branch, the lowering for any other platform the plain one, so XLA never sees a
  conditional and the program for a GPU or TPU is the plain one (``tests/test_export.py``
  exports the trainer's step for ``cuda`` and ``tpu`` on a CPU host and checks it). Where
  the CPU formulation of a layer *is* the plain op (``choose`` says ``lax_conv``, a pooling
  that shrinks), nothing is staged twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
from jax import lax

from vggjax.ops import cpu, xla
from vggjax.ops.policy import MODES, Policy, plain
from vggjax.ops.xla import adaptive_avg_pool

Array = jax.Array

__all__ = [
    "MODES",
    "Conv",
    "Policy",
    "adaptive_avg_pool",
    "conv_formulation",
    "run_once_options",
    "max_pool",
    "plain",
    "pooled_linear",
    "sums_of_squares",
]


def _dispatch(policy: Policy, args: Sequence[Any], cpu_fn: Callable, xla_fn: Callable) -> Any:
    """``cpu_fn(*args)`` or ``xla_fn(*args)`` as the policy says; for ``"auto"``, chosen at
    lowering."""
    if policy.mode == "xla":
        return xla_fn(*args)
    if policy.mode == "cpu":
        return cpu_fn(*args)
    return lax.platform_dependent(*args, cpu=cpu_fn, default=xla_fn)


def _explicit_padding(
    padding: Any, in_hw: Sequence[int], kernel_hw: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """``padding`` ("SAME", "VALID" or ((lo, hi), (lo, hi))) as explicit (lo, hi) pairs for
    stride 1."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), (1, 1), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    """True when ``dimension_numbers`` describe NHWC inputs, HWIO kernels and NHWC outputs."""
    if ndim != 4 or dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        # Flax passes specs as permutations: NHWC lhs = (0, 3, 1, 2), HWIO rhs = (3, 2, 0, 1).
        return (
            tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
        )
    return tuple(dimension_numbers) == xla.NHWC


def conv_formulation(
    policy: Policy,
    platform: str,
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    padding: Any = "SAME",
) -> str:
    """The formulation a stride-1 NHWC conv of these shapes runs when lowered for ``platform``.

    ``"lax_conv"`` off CPU under ``"auto"`` (and always under ``"xla"``); otherwise what
    :func:`vggjax.ops.cpu.choose` picks: ``"im2col"``, ``"rows"``, ``"tapgrad"`` or ``"lax_conv"``.
    """
    if policy.formulations(platform) == "xla":
        return "lax_conv"
    pads = _explicit_padding(padding, x_shape[1:3], kernel_shape[:2])
    return cpu.choose(
        policy, x_shape[1:3], kernel_shape[:2], pads, x_shape[3], kernel_shape[3], x_shape[0]
    )


@dataclasses.dataclass(frozen=True)
class Conv:
    """``lax.conv_general_dilated`` as the policy says; pass it as
    ``nnx.Conv(conv_general_dilated=Conv(policy))``.

    Hashable (a frozen dataclass of a frozen policy), so it is a valid static attribute of
    an NNX module and two layers built with the same policy have equal graph definitions.
    Strided, dilated, grouped or non-NHWC convs always go to ``lax.conv_general_dilated``.
    """

    policy: Policy = Policy()

    def __call__(
        self,
        lhs: Array,
        rhs: Array,
        window_strides: Sequence[int],
        padding: Any,
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
        precision: Any = None,
        preferred_element_type: Any = None,
        **kwargs: Any,
    ) -> Array:
        ones = (1,) * (lhs.ndim - 2)
        simple = (
            self.policy.mode != "xla"
            and _is_nhwc_hwio(dimension_numbers, lhs.ndim)
            and tuple(window_strides) == ones
            and tuple(lhs_dilation or ones) == ones
            and tuple(rhs_dilation or ones) == ones
            and feature_group_count == 1
            and batch_group_count == 1
            and kwargs.get("out_sharding") is None
        )
        if simple:
            pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2])
            kind = cpu.choose(
                self.policy,
                lhs.shape[1:3],
                rhs.shape[:2],
                pads,
                lhs.shape[3],
                rhs.shape[3],
                lhs.shape[0],
            )
            if kind != "lax_conv":
                return _dispatch(
                    self.policy,
                    (lhs, rhs),
                    lambda x, k: cpu.conv(
                        self.policy, x, k, pads, precision, preferred_element_type
                    ),
                    lambda x, k: xla.conv_nhwc(x, k, pads, precision, preferred_element_type),
                )
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


def max_pool(x: Array, size: int = 2, *, policy: Policy = Policy()) -> Array:
    """2-D max pooling, window and stride ``size``, no padding (torch ``MaxPool2d(size)``); NHWC.

    ``reduce_window`` (:func:`vggjax.ops.xla.max_pool`), or on CPU with ``argmax_max_pool``
    the argmax-and-select formulation (:func:`vggjax.ops.cpu.max_pool`): the same values and
    the same gradient, ties included.
    """
    if not policy.argmax_max_pool:
        return xla.max_pool(x, size)
    return _dispatch(policy, (x,), lambda v: cpu.max_pool(v, size), lambda v: xla.max_pool(v, size))


def pooled_linear(
    x: Array,
    pool_size: int | tuple[int, int],
    kernel: Array,
    bias: Array | None,
    *,
    precision: Any = None,
    policy: Policy = Policy(),
) -> Array:
    """``adaptive_avg_pool(x, pool_size).reshape(N, -1) @ kernel + bias`` (torchvision's
    avgpool → fc6).

    ``x``: ``(N, h, w, C)``; ``kernel``: ``(oh·ow·C, K)`` in (h, w, c) flatten order; returns
    ``(N, K)``. On CPU, when the pooling upsamples, the pooling is folded into the kernel
    (:func:`vggjax.ops.cpu.pooled_linear`); elsewhere it is pool then matmul.
    """
    size = (pool_size, pool_size) if isinstance(pool_size, int) else tuple(pool_size)
    plain_fn = lambda v, k, b: xla.pooled_linear(v, size, k, b, precision)  # noqa: E731
    if not cpu.folds_pooled_linear(policy, x.shape[1:3], size, x.shape[0]):
        return plain_fn(x, kernel, bias)
    return _dispatch(
        policy,
        (x, kernel, bias),
        lambda v, k, b: cpu.pooled_linear(v, size, k, b, precision),
        plain_fn,
    )


def sums_of_squares(leaves: Sequence[Array], *, policy: Policy = Policy()) -> list[Array]:
    """``[Σ x² for x in leaves]``, each a float32 scalar: ``vdot`` on CPU (``squares_by_dot``),
    else ``sum(square)``."""
    leaves = list(leaves)
    if not leaves:
        return []
    if not policy.squares_by_dot:
        return [xla.sum_of_squares(x) for x in leaves]
    out = _dispatch(
        policy,
        (leaves,),
        lambda ls: [cpu.sum_of_squares(x) for x in ls],
        lambda ls: [xla.sum_of_squares(x) for x in ls],
    )
    return list(out)


def run_once_options(platform: str) -> dict[str, Any] | None:
    """Compiler options for a computation lowered for ``platform`` that runs once: on CPU,
    :data:`vggjax.ops.cpu.RUN_ONCE_OPTIONS`; elsewhere None (the platform's defaults)."""
    return dict(cpu.RUN_ONCE_OPTIONS) if platform == "cpu" else None
