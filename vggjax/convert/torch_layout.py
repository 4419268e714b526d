"""The torchvision state dict of a vggjax VGG: which tensor is which variable, and how
each one's layout changes on the way.

PyTorch convs are OIHW, vggjax (Flax) HWIO; PyTorch flattens the pooled map in (c, h, w)
order before ``classifier.0``, vggjax in (h, w, c) order (NHWC), so fc6's input axis is
permuted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax.models.heads import ConvHead, FCHead
from vggjax.models.vgg import VGG

_FC_TORCH = {"fc6": 0, "fc7": 3, "fc8": 6}  # head layer -> index in torchvision's classifier


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One PyTorch state-dict tensor and the vggjax variable it maps to."""

    key: str  # torchvision state-dict key, e.g. "features.0.weight"
    shape: tuple[int, ...]  # its shape in PyTorch
    variable: nnx.Variable | None  # the vggjax variable (None: num_batches_tracked)
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _torch_indices(model: VGG) -> list[tuple[str, str, int]]:
    """``(kind, vggjax name, torchvision features index)`` for every backbone step."""
    return [(kind, name, i) for i, (kind, name) in enumerate(model.features.plan)]


def _fc_head(model: VGG) -> FCHead | ConvHead | None:
    return model.head if isinstance(model.head, (FCHead, ConvHead)) else None


def _head_pool(head: FCHead | ConvHead) -> int:
    return head.pool_size if isinstance(head, FCHead) else head.kernel_size


def torchvision_module_names(model: VGG) -> dict[str, str]:
    """Map each named tap of ``model(x, return_features=True)`` to torchvision's module path.

    E.g. ``{"conv1_1": "features.0", "relu1_1": "features.1", ..., "pool5": "features.30",
    "avgpool": "avgpool", "fc6": "classifier.0", "relu6": "classifier.1", ...}`` for VGG-16
    with an ``fc`` head: the vggjax output of a tap equals the torchvision module's output
    (transposed from NCHW to NHWC). Only backbone taps for heads other than ``fc``.
    """
    names = {name: f"features.{i}" for _, name, i in _torch_indices(model)}
    if isinstance(model.head, FCHead):
        names["avgpool"] = "avgpool"
        order = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")
        names.update({name: f"classifier.{i}" for i, name in enumerate(order)})
    return names


def _entries(model: VGG, *, include_head: bool = True) -> list[_Entry]:
    """The torchvision state dict of ``model`` as a list of :class:`_Entry`, in
    torchvision's order."""
    out = _backbone_entries(model)
    head = _fc_head(model)
    if include_head and head is not None:
        out += _head_entries(head, model.features.out_channels)
    return out


def _backbone_entries(model: VGG) -> list[_Entry]:
    out: list[_Entry] = []
    for kind, name, i in _torch_indices(model):
        layer = getattr(model.features, name, None)
        if kind == "conv":
            k = layer.kernel
            h, w, cin, cout = k.get_value().shape
            out.append(
                _Entry(
                    f"features.{i}.weight",
                    (cout, cin, h, w),
                    k,
                    lambda t: t.transpose(2, 3, 1, 0),
                    lambda j: j.transpose(3, 2, 0, 1),
                )
            )
            out.append(_Entry(f"features.{i}.bias", (cout,), layer.bias, _same, _same))
        elif kind == "bn":
            n = layer.scale.get_value().shape[0]
            for tkey, var in (
                ("weight", layer.scale),
                ("bias", layer.bias),
                ("running_mean", layer.mean),
                ("running_var", layer.var),
            ):
                out.append(_Entry(f"features.{i}.{tkey}", (n,), var, _same, _same))
            out.append(_Entry(f"features.{i}.num_batches_tracked", (), None, _same, _same))
    return out


def _head_entries(head: FCHead | ConvHead, channels: int) -> list[_Entry]:
    """fc6-fc8 of an ``fc`` or ``fc_conv`` head; ``channels``: the backbone's output."""
    out: list[_Entry] = []
    for name, idx in _FC_TORCH.items():
        layer = getattr(head, name)
        shape = layer.kernel.get_value().shape
        cout = shape[-1]
        if name == "fc6":
            p = _head_pool(head)
            cin = p * p * channels
            to_jax, to_torch = _fc6_layouts(p, channels, shape)
        else:
            cin = shape[-2]
            to_jax, to_torch = _dense_layouts(shape)
        out.append(_Entry(f"classifier.{idx}.weight", (cout, cin), layer.kernel, to_jax, to_torch))
        out.append(_Entry(f"classifier.{idx}.bias", (cout,), layer.bias, _same, _same))
    return out


def _fc6_layouts(p: int, c: int, shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    """fc6's kernel between torch's (out, c·p·p) and vggjax's ``shape`` (fc or conv)."""

    # fc6 is 100M values: its permutation runs in XLA (tiled, multi-threaded), which is
    # much faster than a strided numpy copy.
    def to_jax(t):
        # (out, c, h, w) -> (h, w, c, out): torch's CHW flatten order -> NHWC's HWC.
        t = jnp.asarray(t)
        return t.reshape(t.shape[0], c, p, p).transpose(2, 3, 1, 0).reshape(shape)

    def to_torch(j):
        j = jnp.asarray(j)
        return j.reshape(p, p, c, -1).transpose(3, 2, 0, 1).reshape(j.shape[-1], -1)

    return to_jax, to_torch


def _dense_layouts(shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    """fc7/fc8's kernel between torch's (out, in) and vggjax's ``shape`` (fc or 1x1 conv)."""

    def to_jax(t):
        return t.T.reshape(shape)

    def to_torch(j):
        return j.reshape(j.shape[-2], j.shape[-1]).T

    return to_jax, to_torch
