"""What every converter shares: building the target model cheaply, and the pieces of their
error messages."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax.errors import one_of
from vggjax.models.vgg import ARCHS, VGG, build


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 240 else text[:237] + "..."


def _arch_hint(found: str | None, arch: str, flag: str = "--arch") -> str:
    if found and found != arch:
        return f"; the file holds {found} weights: use {flag} {found}"
    return ""


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise one_of("architecture", arch, ARCHS)


def _skeleton(factory: Callable[[nnx.Rngs], VGG], seed: int) -> VGG:
    """``factory(rngs)`` (which builds with ``init="zeros"``) without running it: every
    weight is about to be overwritten.

    Built abstractly (``nnx.eval_shape``), then given placeholder values (lazily allocated
    numpy zeros for weights, real keys for the dropout streams), which is much faster than
    initialising 138M parameters only to replace them.
    """
    model = nnx.eval_shape(lambda: factory(nnx.Rngs(seed)))
    base = jax.random.key(seed)
    leaves, treedef = jax.tree_util.tree_flatten(nnx.state(model))
    filled = []
    for i, x in enumerate(leaves):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            filled.append(
                jax.random.split(jax.random.fold_in(base, i), x.shape)
                if x.shape
                else jax.random.fold_in(base, i)
            )
        elif x.size < 1024:
            filled.append(jnp.zeros(x.shape, x.dtype))
        else:
            filled.append(np.zeros(x.shape, x.dtype))
    nnx.update(model, treedef.unflatten(filled))
    return model


def _make(abstract: bool, seed: int, *args: Any, **kwargs: Any) -> VGG:
    """``build(*args, **kwargs)``: as a :func:`_skeleton` when every weight will be loaded,
    else randomly initialised."""
    if abstract:
        return _skeleton(lambda rngs: build(*args, init="zeros", rngs=rngs, **kwargs), seed)
    return build(*args, rngs=nnx.Rngs(seed), **kwargs)
