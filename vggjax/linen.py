"""Use vggjax models from Flax Linen projects.

:func:`build` (and ``vgg11`` … ``vgg19_bn``) return a ``flax.linen.Module`` that wraps the
NNX :class:`~vggjax.models.vgg.VGG` with Flax's ``nnx.bridge.ToLinen``: assign it in a
Linen ``setup`` or call it inside ``@nn.compact``, and its weights live in the usual
``params`` collection (BatchNorm statistics in ``batch_stats``) with the same nested names
as the NNX model (``features/conv1_1/kernel``, ``head/fc6/kernel``, …).

Call: ``module(x, train=False, return_features=False)`` with NHWC ``x``. ``train=True``
enables dropout (pass ``rngs={"dropout": key}`` to ``apply``) and BatchNorm batch
statistics (``mutable=["batch_stats"]``), exactly like Linen's own layers.

Example::

    import flax.linen as nn, vggjax.linen

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            backbone = vggjax.linen.vgg11(num_classes=10, width=0.25, head="gap", name="backbone")
            x = backbone(x, train=train)
            return nn.Dense(10)(nn.relu(x))

    variables = Classifier().init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    # pretrained: variables["params"]["backbone"] = vggjax.linen.variables_from(nnx_model)["params"]

The wrapper rebuilds the NNX module on every ``apply`` (that is how the bridge works); at
apply time it is built with cheap zero initialisers, and under ``jax.jit`` (as in any
Linen train step) the rebuild is traced once and costs nothing at run time.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict

from vggjax.freeze import Frozen
from vggjax.models.vgg import ARCHS, VGG

__all__ = ["build", "variables_from", "LinenVGG"] + list(ARCHS)


class LinenVGG(VGG):
    """The NNX :class:`VGG` that the Linen wrapper instantiates: built from an arch name,
    called with ``train``."""

    def __init__(self, arch: str, options: Any = FrozenDict(), *, rngs: nnx.Rngs):
        from vggjax.errors import one_of

        if arch not in ARCHS:
            raise one_of("architecture", arch, ARCHS)
        cfg, bn = ARCHS[arch]
        opts = {
            k: (dict(v) if isinstance(v, (FrozenDict, dict)) else v)
            for k, v in dict(options).items()
        }
        initialising = "params" in rngs
        if not initialising:
            # Apply time: every weight is replaced by the Linen variables right after.
            opts["init"] = "zeros"
        seed = {name: rngs[name]() for name in ("params", "dropout") if name in rngs}
        streams = nnx.Rngs(params=seed.get("params", 0), dropout=seed.get("dropout", 0))
        super().__init__(cfg, batch_norm=bn, name=arch, rngs=streams, **opts)

    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
        """Logits ``(N, num_classes)`` (and the feature dict) in training or inference mode."""
        self.train() if train else self.eval()
        return super().__call__(x, return_features=return_features)


def _freeze_options(options: dict[str, Any]) -> FrozenDict:
    return FrozenDict(
        {k: (FrozenDict(v) if isinstance(v, dict) else v) for k, v in options.items()}
    )


def build(arch: str, *, name: str | None = None, **options: Any) -> nn.Module:
    """A Linen module wrapping ``vggjax.build(arch, **options)`` (options as :class:`VGG`:
    num_classes, head, width, …).

    ``name`` names it inside a parent Linen module (its variables go under that key).
    Call it as ``module(x, train=False, return_features=False)``; returns logits
    ``(N, num_classes)`` or ``(logits, feats)``.
    """
    if arch not in ARCHS:
        from vggjax.errors import one_of

        raise one_of("architecture", arch, ARCHS)
    options.pop("rngs", None)
    return nnx.bridge.ToLinen(LinenVGG, args=(arch, _freeze_options(options)), name=name)


def variables_from(model: VGG) -> dict[str, Any]:
    """Linen variables ``{"params": ..., "batch_stats": ...}`` holding an NNX model's weights.

    Put them under the wrapper's name in a Linen model's variables to start from, e.g.,
    weights converted by :mod:`vggjax.convert`; frozen weights are returned as params.
    """
    params = nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, Frozen)))
    out = {"params": params}
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    if jax.tree.leaves(stats):
        out["batch_stats"] = stats
    return out


def _builder(arch: str):
    def fn(*, name: str | None = None, **options: Any) -> nn.Module:
        return build(arch, name=name, **options)

    fn.__name__ = fn.__qualname__ = arch
    fn.__doc__ = (
        f"Linen module wrapping ``vggjax.{arch}`` (options as :func:`vggjax.{arch}`); "
        "see :func:`build`."
    )
    return fn


vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn = map(_builder, ARCHS)
