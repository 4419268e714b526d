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


def max_pool(x: Array, size: int = 2) -> Array:
    """2-D max pooling with window and stride ``size`` and no padding (torch ``MaxPool2d(size)``)."""
    return nnx.max_pool(x, (size, size), strides=(size, size), padding="VALID")


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
