"""VGG models and heads, and the model registry. Imports nothing from training code.

The reference-case networks live in :mod:`vggjax.models.reference`; every model, VGG or not,
is registered by name in :mod:`vggjax.models.registry`.
"""

from vggjax.models import registry
from vggjax.models.heads import HEADS, ConvHead, FCHead, GAPHead, make_head
from vggjax.models.vgg import (
    ARCHS,
    CFGS,
    VGG,
    Features,
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

__all__ = [
    "ARCHS",
    "CFGS",
    "HEADS",
    "VGG",
    "ConvHead",
    "FCHead",
    "Features",
    "GAPHead",
    "build",
    "make_head",
    "registry",
]
# The builders, one per row of ARCHS (vggjax itself re-exports them too).
__all__ += ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
