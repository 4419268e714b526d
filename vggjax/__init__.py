"""vggjax: VGG networks in JAX/Flax NNX.

Public API, VGG only: the builders (``vgg11`` … ``vgg19_bn``, ``build``), :class:`VGG` and its
heads, the initializer registry, freezing, the compute policy (``vggjax.ops.Policy``), the
errors, :func:`summary`, and (loaded on first use) ``vggjax.convert`` (torchvision/Keras
weights), ``vggjax.features`` (feature taps, perceptual loss) and ``vggjax.linen`` (Linen
wrappers). The reference-case networks are in ``vggjax.models.reference``; training code is
in ``vggjax.training`` and ``vggjax.train`` (the CLI) and is not imported here.
"""

from vggjax import errors, initializers, ops
from vggjax.errors import VggjaxError
from vggjax.freeze import Frozen, freeze, unfreeze
from vggjax.layers import adaptive_avg_pool
from vggjax.models import ARCHS, CFGS, VGG, ConvHead, FCHead, GAPHead, build
from vggjax.models.vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__all__ = [
    "ARCHS",
    "CFGS",
    "VGG",
    "ConvHead",
    "FCHead",
    "Frozen",
    "GAPHead",
    "VggjaxError",
    "adaptive_avg_pool",
    "build",
    "convert",
    "errors",
    "features",
    "freeze",
    "initializers",
    "linen",
    "ops",
    "summary",
    "unfreeze",
]
# The builders, one per row of ARCHS.
__all__ += ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

__version__ = "0.1.0"


def __getattr__(name: str):
    # `summary` is imported lazily: importing vggjax.summary here would make
    # `python -m vggjax.summary` warn that the module was already imported. The module is
    # callable, so `vggjax.summary(model, shape)` works once it is loaded.
    if name in ("summary", "summarize", "Summary"):
        import importlib

        module = importlib.import_module("vggjax.summary")
        return module if name == "summary" else getattr(module, name)
    if name in ("convert", "features", "linen"):
        # Lazy for the same reason (`python -m vggjax.convert`); `vggjax.linen` needs flax.linen.
        import importlib

        return importlib.import_module(f"vggjax.{name}")
    raise AttributeError(f"module 'vggjax' has no attribute {name!r}")
