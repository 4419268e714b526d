"""vggjax: VGG networks in JAX/Flax NNX.

Public API: the builders (``vgg11`` … ``vgg19_bn``, ``build``), :class:`VGG` and its heads,
the initializer registry, freezing, :func:`summary`, and (loaded on first use)
``vggjax.convert`` (torchvision/Keras weights), ``vggjax.features`` (feature taps,
perceptual loss) and ``vggjax.linen`` (Linen wrappers). Training code lives in
``vggjax.train`` and is not imported here.
"""

from vggjax import initializers
from vggjax.errors import VggjaxError
from vggjax.freeze import Frozen, freeze, unfreeze
from vggjax.layers import adaptive_avg_pool
from vggjax.models import (
    ARCHS,
    CFGS,
    SEED_NETS,
    VGG,
    ConvHead,
    FCHead,
    GAPHead,
    Net,
    NetBatchNorm,
    NetDepth,
    NetDropout,
    NetRes,
    NetResDeep,
    NetWidth,
    OverFeatSlim,
    ResBlock,
    SeedNet,
    TwoConvBN,
    build,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg16_fc_conv_400,
    vgg19,
    vgg19_bn,
    wsdr,
)

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
