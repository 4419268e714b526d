"""Building blocks shared by every network: conv, linear and BatchNorm factories, max
pooling, input checks and activations.

How a conv or a max pool is *computed* is not decided here: the layers take an explicit
compute policy (:class:`vggjax.ops.Policy`, ``compute=`` on every model) and call
:mod:`vggjax.ops`, which lowers plain XLA ops on GPU/TPU and the CPU-tuned formulations
on CPU.

All tensors are NHWC. Layers here create their parameters with cheap zero initialisers;
the real initialisation is applied afterwards by :func:`vggjax.initializers.apply`, which
sees every layer's path and so can honour per-layer overrides.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import ops
from vggjax.errors import ShapeError
from vggjax.ops import Policy, adaptive_avg_pool  # noqa: F401 - adaptive_avg_pool is public here too

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


def max_pool(x: Array, size: int = 2, *, compute: Policy = Policy()) -> Array:
    """2-D max pooling, window and stride ``size``, no padding (torch ``MaxPool2d(size)``), as
    ``compute`` says."""
    return ops.max_pool(x, size, policy=compute)


def check_input(x: Array, *, channels: int, min_size: int, name: str, why: str) -> None:
    """Raise :class:`ShapeError` if ``x`` is not NHWC with ``channels`` channels and
    H, W ≥ ``min_size``."""
    if x.ndim != 4:
        raise ShapeError(
            f"{name} expects NHWC images of shape (N, H, W, {channels}), got shape {tuple(x.shape)}"
        )
    _, h, w, c = x.shape
    if c != channels:
        raise ShapeError(
            f"{name} expects {channels} input channels (NHWC, shape (N, H, W, {channels})), "
            "got shape "
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
    compute: Policy = Policy(),
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """An ``nnx.Conv`` with zero-initialised parameters (see module docstring).

    ``padding`` is "SAME", "VALID" or an int p meaning torch's ``padding=p`` on both sides.
    The convolution is ``vggjax.ops.Conv(compute)``; the parameters are the usual
    ``nnx.Conv`` HWIO ``kernel`` and ``bias``.
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
        conv_general_dilated=ops.Conv(Policy.parse(compute)),
        rngs=rngs,
    )


def linear(
    in_f: int,
    out_f: int,
    *,
    use_bias: bool = True,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
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
