"""An ``fc`` head as convolutions (``fc_conv``): the same weights, evaluated densely.

fc6 becomes a k×k VALID conv and fc7/fc8 1×1 convs, so the network runs on images larger
than it was trained on and gives a score map instead of one prediction.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from vggjax.convert.common import _skeleton
from vggjax.errors import ConfigError
from vggjax.models.heads import FCHead
from vggjax.models.vgg import VGG


def _rebuild_options(model: VGG) -> dict[str, Any]:
    """Constructor options that rebuild ``model``'s architecture (explicit cfg, BN settings,
    dtypes)."""
    cfg: list[Any] = []
    bn = None
    for kind, name in model.features.plan:
        layer = getattr(model.features, name, None)
        if kind == "conv":
            cfg.append(int(layer.kernel.get_value().shape[-1]))
            conv = layer
        elif kind == "pool":
            cfg.append("M")
        elif kind == "bn":
            bn = layer
    head = model.head
    drop = getattr(head, "drop6", None)
    opts: dict[str, Any] = dict(
        cfg=cfg,
        num_classes=model.num_classes,
        batch_norm=bn is not None,
        in_channels=model.in_channels,
        dropout=drop.rate if drop is not None else 0.0,
        dtype=conv.dtype,
        param_dtype=conv.param_dtype,
        name=model.name,
    )
    if bn is not None:
        opts.update(norm_momentum=bn.momentum, norm_eps=bn.epsilon)
    return opts


def to_fc_conv(model: VGG, *, return_map: bool = False, seed: int = 0) -> VGG:
    """The same network with its ``fc`` head as convolutions (``fc_conv``): fc6 a k×k VALID
    conv, fc7/fc8 1×1.

    The backbone and BatchNorm statistics are copied and the head is ported by
    :meth:`ConvHead.load_fc`, so logits are equal at the size where the fc head's pooled map
    is k×k (224 for ImageNet weights) and larger inputs give a score map (averaged into
    logits, or returned as ``(N, h, w, classes)`` with ``return_map``). Eval mode.
    """
    if not isinstance(model.head, FCHead):
        raise ConfigError(
            f"to_fc_conv needs a model with an 'fc' head, got a {type(model.head).__name__}"
        )
    opts = _rebuild_options(model)
    cfg = opts.pop("cfg")
    head = model.head
    dense = _skeleton(
        lambda rngs: VGG(
            cfg,
            head="fc_conv",
            head_options={
                "hidden": int(head.fc7.kernel.get_value().shape[0]),
                "kernel_size": head.pool_size,
                "return_map": return_map,
            },
            init="zeros",
            rngs=rngs,
            **opts,
        ),
        seed,
    )
    nnx.update(dense.features, nnx.state(model.features))
    dense.head.load_fc(head)
    dense.eval()
    dense.has_imported_head = getattr(model, "has_imported_head", True)
    return dense
