"""Reference cases 000 and 001: VGG-16 variants built from :class:`~vggjax.models.vgg.VGG`.

* :func:`wsdr` — the GAP-without-FC VGG-16 variant (seed 000): VGG-16 conv1–conv5 with no
  pool after conv5, ConvReLU(512→1024, 3×3), ConvReLU(1024→classes, 3×3) — a ReLU on the
  class scores — then global average pooling (= ``AvgPool2d(14)`` at 224×224). Optional
  BatchNorm with eps 1e-3 and PyTorch momentum 0, and the optional FC after the pooling.
* :func:`vgg16_fc_conv_400` — VGG-16 at 400×400 with fc6 as a 12×12 conv (seed 001),
  frozen features, 3 classes; reproduces the torchsummary counts of the seed.
"""

from __future__ import annotations

from vggjax.freeze import freeze
from vggjax.models.options import NET, takes
from vggjax.models.vgg import CFGS, VGG, scale_width

# VGG-16 (config D) without its last max pool: WSDR keeps conv5's 14×14 map at 224 input.
WSDR_CFG: list[int | str] = CFGS["D"][:-1]


@takes(NET, init="torch_default")
def wsdr(
    num_classes: int = 20,
    *,
    batch_norm: bool = False,
    fc: bool = False,
    score_relu: bool = True,
    width: float = 1.0,
    in_channels: int = 3,
    **options,
) -> VGG:
    """The WSDR network of seed 000 as a :class:`VGG` with a ``"gap"`` head.

    VGG-16 conv1–conv5 (no pool after conv5), then ConvReLU(512→1024·width, 3×3) and
    ConvReLU(1024→``num_classes``, 3×3) — ``score_relu=False`` drops the ReLU on the class
    scores (one fix) — then the spatial mean, which at 224×224 input is the original's
    ``AvgPool2d(14)`` over the 14×14 map; ``fc=True`` adds the Linear(classes→classes) that
    the author found fixes training. ``batch_norm=True`` puts BatchNorm(eps 1e-3, PyTorch
    momentum 0 = Flax momentum 1.0, so running statistics never move) after every conv,
    head convs included, as ``ConvReLU(bn=True)`` does. The default init is PyTorch's
    (the seed sets none). Input ``(N, H, W, 3)``, H, W ≥ 16; output ``(N, num_classes)``.
    """
    return VGG(
        list(WSDR_CFG),
        num_classes=num_classes,
        batch_norm=batch_norm,
        head="gap",
        head_options={
            "hidden": [scale_width(1024, width)],
            "kernel_size": 3,
            "score_act": "relu" if score_relu else None,
            "batch_norm": batch_norm,
            "fc": fc,
        },
        width=width,
        in_channels=in_channels,
        # PyTorch momentum=0 means running = 1·running + 0·batch: Flax momentum 1.0.
        norm_momentum=1.0,
        norm_eps=1e-3,
        name="wsdr_bn" if batch_norm else "wsdr",
        **options,
    )


@takes(NET)
def vgg16_fc_conv_400(
    num_classes: int = 3,
    *,
    kernel_size: int = 12,
    freeze_features: bool = True,
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    **options,
) -> VGG:
    """The 400×400 VGG-16 of seed 001: frozen VGG-16 features + fc6 as a 12×12 conv.

    400 → five 2×2 pools → a 12×12×512 map; fc6 is a ``kernel_size``² VALID conv to 4096
    (so the map becomes 1×1), then ReLU, Dropout, a 1×1 conv 4096, ReLU, Dropout, a 1×1
    conv to ``num_classes``, and the average pooling, which on a 1×1 map is a no-op. The
    original ends in a softmax; this returns the logits ``(N, num_classes)``. With
    ``freeze_features`` the 14,714,688 backbone weights are :class:`~vggjax.freeze.Frozen`
    (torchsummary's "Non-trainable params"). Input ``(N, H, W, 3)`` with H, W ≥ 32·kernel_size.
    """
    model = VGG(
        "D",
        num_classes=num_classes,
        head="fc_conv",
        head_options={"kernel_size": kernel_size},
        width=width,
        in_channels=in_channels,
        dropout=dropout,
        name="vgg16_fc_conv_400",
        **options,
    )
    if freeze_features:
        freeze(model, "features/*")
    return model
