"""The networks of the reference cases ("seeds"): the "my deep net does not train" reports
the experiments reproduce, each faithful behind flags. Not part of ``vggjax.*``: import them
from here, or build them by name through the model registry (``config.model = "wsdr"``).

* :func:`wsdr`, :func:`vgg16_fc_conv_400` — VGG-16 variants (seeds 000, 001; :mod:`.vgg_cases`);
* :class:`Net` … :class:`NetResDeep` — the CIFAR-2 nets of *Deep Learning with PyTorch* ch. 8
  (seed 002; :mod:`.book`);
* :class:`OverFeatSlim` — slim OverFeat with 1×1-conv heads (seed 003; :mod:`.overfeat`);
* :class:`TwoConvBN` — [conv, BN, ReLU] × 2 of the zero-init study (seed 004; :mod:`.two_conv`).

Conventions as everywhere in vggjax: NHWC; ``model(x, return_features=True)`` returns
``(logits, feats)`` with every layer op recorded in order under a name that the summary
resolves to the module owning the weights (a module path joined by ``_``, e.g.
``block3_conv`` → ``block3/conv``; ``#k`` marks the k-th application of a shared module).
:data:`NETS` names them with their natural input size (``python -m vggjax.summary --list``).
"""

from __future__ import annotations

import functools

from vggjax.models import registry
from vggjax.models.reference.book import (
    Net,
    NetBatchNorm,
    NetDepth,
    NetDropout,
    NetRes,
    NetResDeep,
    NetWidth,
    ResBlock,
)
from vggjax.models.reference.overfeat import OVERFEAT_BIAS_INIT, OVERFEAT_INIT, OverFeatSlim
from vggjax.models.reference.two_conv import TwoConvBN
from vggjax.models.reference.vgg_cases import WSDR_CFG, vgg16_fc_conv_400, wsdr

__all__ = [
    "NETS",
    "OVERFEAT_BIAS_INIT",
    "OVERFEAT_INIT",
    "WSDR_CFG",
    "Net",
    "NetBatchNorm",
    "NetDepth",
    "NetDropout",
    "NetRes",
    "NetResDeep",
    "NetWidth",
    "OverFeatSlim",
    "ResBlock",
    "TwoConvBN",
    "vgg16_fc_conv_400",
    "wsdr",
]

_wsdr_bn = functools.partial(wsdr, batch_norm=True)

# name -> (builder, the callable whose signature lists its options, input size, description)
_TABLE = {
    "wsdr": (wsdr, None, 224, "seed 000: VGG-16 conv1-5 + ReLU'd GAP scores, no FC"),
    "wsdr_bn": (_wsdr_bn, wsdr, 224, "seed 000 with BN (eps 1e-3, momentum 0)"),
    "vgg16_fc_conv_400": (
        vgg16_fc_conv_400,
        None,
        400,
        "seed 001: frozen VGG-16, fc6 as a 12x12 conv, 3 classes",
    ),
    "net": (Net, Net.__init__, 32, "seed 002: CIFAR-2 Net (18,090 params)"),
    "net_width": (NetWidth, NetWidth.__init__, 32, "seed 002: NetWidth"),
    "net_dropout": (NetDropout, NetDropout.__init__, 32, "seed 002: NetDropout (Dropout2d 0.4)"),
    "net_batchnorm": (NetBatchNorm, NetBatchNorm.__init__, 32, "seed 002: NetBatchNorm"),
    "net_depth": (NetDepth, NetDepth.__init__, 32, "seed 002: NetDepth"),
    "net_res": (NetRes, NetDepth.__init__, 32, "seed 002: NetRes"),
    "net_res_deep": (NetResDeep, NetResDeep.__init__, 32, "seed 002: NetResDeep (10 ResBlocks)"),
    "overfeat_slim": (
        OverFeatSlim,
        OverFeatSlim.__init__,
        60,
        "seed 003: slim OverFeat, 1x1 heads, 60x60, 3 classes",
    ),
    "two_conv_bn": (
        TwoConvBN,
        TwoConvBN.__init__,
        224,
        "seed 004: [conv, BN, ReLU] x 2, per-pixel logits",
    ),
}

NETS: dict[str, registry.Entry] = {
    name: registry.register(
        name,
        build,
        input_size=size,
        description=doc,
        family="reference",
        options=options,
        fixed=("batch_norm",) if build is _wsdr_bn else (),
    )
    for name, (build, options, size, doc) in _TABLE.items()
}
