"""vggjax: VGG networks in JAX/Flax NNX.

Public API: the builders (``vgg11`` … ``vgg19_bn``, ``build``), :class:`VGG` and its heads,
the initializer registry, freezing, and :func:`summary`. Training code lives in
``vggjax.train`` and is not imported here.
"""

from vggjax import initializers
from vggjax.errors import VggjaxError
from vggjax.freeze import Frozen, freeze, unfreeze
from vggjax.layers import adaptive_avg_pool
from vggjax.models import (
    ARCHS,
    CFGS,
    VGG,
    ConvHead,
    FCHead,
    GAPHead,
    build,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg19,
    vgg19_bn,
)

__version__ = "0.1.0"
