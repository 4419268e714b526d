"""VGG models, heads and the reference-case networks. Imports nothing from training code."""

from vggjax.models.heads import ConvHead, FCHead, GAPHead, make_head
from vggjax.models.seed_nets import (
    SEED_NETS,
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
    vgg16_fc_conv_400,
    wsdr,
)
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
