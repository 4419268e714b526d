"""torchvision VGG weights into a vggjax model and back.

The width, input channels, classifier width, pooled size and class count are read from
the tensors, so width-reduced and few-class exports convert too. Every key of the state
dict must be one the architecture has, with its shape; the first that is not is named in
a one-line :class:`~vggjax.errors.CheckpointError`, with the architecture the file does
hold when it is another one.
"""

from __future__ import annotations

import collections
import math
import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from vggjax.convert.common import _arch_hint, _check_arch, _make, _shape
from vggjax.convert.torch_files import _plain_state_dict, load_torch_state_dict
from vggjax.convert.torch_layout import _entries, _Entry, _fc_head
from vggjax.errors import CheckpointError, ConfigError
from vggjax.models.vgg import ARCHS, CFGS, VGG, scale_width

_CONV_KEY = re.compile(r"^features\.(\d+)\.weight$")


def _guess_torchvision_arch(sd: Mapping[str, np.ndarray]) -> str | None:
    """The ``ARCHS`` name whose layer layout the state dict has (any width), or None."""
    convs = sorted(
        (int(m.group(1)), sd[k].shape)
        for k in sd
        if (m := _CONV_KEY.match(k)) and np.ndim(sd[k]) == 4
    )
    if not convs:
        return None
    bn = f"features.{convs[0][0] + 1}.running_mean" in sd
    step = 3 if bn else 2
    cfg: list[Any] = []
    for (i, shape), nxt in zip(convs, convs[1:] + [(None, None)]):
        cfg.append(int(shape[0]))
        if nxt[0] is not None and nxt[0] - i == step + 1:
            cfg.append("M")
        elif nxt[0] is not None and nxt[0] - i != step:
            return None
    cfg.append("M")
    width = cfg[0] / 64
    for name, (c, b) in ARCHS.items():
        want = [v if v == "M" else scale_width(v, width) for v in CFGS[c]]
        if b == bn and want == cfg:
            return name
    return None


def _check_and_set(
    entries: list[_Entry], sd: Mapping[str, np.ndarray], arch: str, origin: str
) -> None:
    """Compare ``sd`` with ``entries`` (first mismatch → CheckpointError) and copy the
    values in."""
    hint = _arch_hint(_guess_torchvision_arch(sd), arch)
    _check_entries(entries, sd, arch, origin, hint)
    known = {e.key for e in entries}
    extra = [k for k in sd if k not in known]
    if extra:
        k = extra[0]
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{origin} does not fit {arch}: unknown key {k} with shape "
            f"{_shape(np.shape(sd[k]))}{more}{hint}"
        )
    for e in entries:
        if e.variable is not None:
            value = e.to_jax(np.asarray(sd[e.key]))
            e.variable.set_value(jnp.asarray(value, dtype=e.variable.get_value().dtype))


def _kind(key: str, ndim: int) -> tuple:
    """What a key names regardless of its index: ("features", "weight", 4) for any conv."""
    return (key.split(".")[0], key.rsplit(".", 1)[-1], ndim)


def _check_entries(
    entries: list[_Entry], sd: Mapping[str, np.ndarray], arch: str, origin: str, hint: str
) -> None:
    """Every entry is in ``sd`` with its shape; a missing key names the file's key of the
    same kind and position, which is usually the cause (another architecture)."""
    by_kind: dict[tuple, list[str]] = collections.defaultdict(list)
    for k in sorted(sd, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")]):
        by_kind[_kind(k, np.ndim(sd[k]))].append(k)
    seen: dict[tuple, int] = collections.defaultdict(int)
    for e in entries:
        group = _kind(e.key, len(e.shape))
        ordinal = seen[group]
        seen[group] += 1
        if e.key not in sd:
            if e.variable is None:  # num_batches_tracked is bookkeeping, not a weight
                continue
            others = by_kind.get(group, [])
            there = (
                f"; in its place the file has {others[ordinal]} with shape "
                f"{_shape(np.shape(sd[others[ordinal]]))}"
                if ordinal < len(others)
                else ""
            )
            raise CheckpointError(
                f"{origin} does not fit {arch}: missing key {e.key} "
                f"(shape {_shape(e.shape)}){there}{hint}"
            )
        have = tuple(np.shape(sd[e.key]))
        if have != tuple(e.shape):
            raise CheckpointError(
                f"{origin} does not fit {arch}: {e.key} has shape {_shape(have)} in the file but "
                f"{_shape(e.shape)} in {arch}{hint}"
            )


def _source_dict(source: Any) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(source, (str, os.PathLike)):
        return load_torch_state_dict(source), os.fspath(source)
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return _plain_state_dict(
            source.state_dict(), f"the {type(source).__name__} module"
        ), f"the {type(source).__name__} module"
    return _plain_state_dict(source, "the state dict"), "the state dict"


def _torchvision_head(
    sd: Mapping[str, np.ndarray], origin: str, width: float, num_classes: int | None
) -> tuple[dict[str, Any], int]:
    """``(head_options, classes)`` of the ``fc`` head that the classifier tensors fit."""
    head_options: dict[str, Any] = {}
    classes = num_classes or 1000
    fc6, fc8 = sd.get("classifier.0.weight"), sd.get("classifier.6.weight")
    last = scale_width(512, width)
    if fc6 is not None and np.ndim(fc6) == 2:
        head_options["hidden"] = int(fc6.shape[0])
        pool = math.isqrt(max(1, fc6.shape[1] // last))
        if pool * pool * last == fc6.shape[1]:
            head_options["pool_size"] = pool
    if fc8 is not None and np.ndim(fc8) == 2:
        if num_classes is not None and num_classes != fc8.shape[0]:
            raise CheckpointError(
                f"{origin} has {fc8.shape[0]} classes (classifier.6.weight {_shape(fc8.shape)}), "
                f"not num_classes={num_classes}; "
                "convert it as is and fine-tune with the new class count (--config.init_from)"
            )
        classes = int(fc8.shape[0])
    return head_options, classes


def from_torchvision(
    source: Any, arch: str, *, num_classes: int | None = None, dropout: float = 0.5, seed: int = 0
) -> VGG:
    """Build the vggjax ``arch`` holding torchvision weights, in eval mode.

    ``source`` is a torchvision VGG module (``torchvision.models.vgg16()``), its
    ``state_dict()`` (tensors or numpy arrays), or a path to one saved with ``torch.save``
    (``.pth``, read with ``weights_only=True``) or as ``.safetensors``. The width,
    input channels, classifier width, pooled size and class count are read from the
    tensors (so width-reduced and few-class exports work). A state dict without
    ``classifier.*`` keys fills the backbone only; the ``fc`` head (``num_classes``,
    default 1000) then keeps its fresh random initialisation. Raises CheckpointError
    naming the first key that is missing, misshapen or unknown for ``arch``.
    """
    _check_arch(arch)
    sd, origin = _source_dict(source)
    first = sd.get("features.0.weight")
    if first is None or np.ndim(first) != 4:
        raise CheckpointError(
            f"{origin} is not a torchvision VGG state dict: missing key features.0.weight "
            f"(a 4-D conv weight); its first keys are {', '.join(list(sd)[:3]) or 'none'}"
        )
    width = first.shape[0] / 64
    has_head = any(k.startswith("classifier.") for k in sd)
    head_options: dict[str, Any] = {}
    classes = num_classes or 1000
    if has_head:
        head_options, classes = _torchvision_head(sd, origin, width, num_classes)
    model = _make(
        has_head,
        seed,
        arch,
        num_classes=classes,
        width=width,
        in_channels=int(first.shape[1]),
        head="fc",
        head_options=head_options,
        dropout=dropout,
    )
    _check_and_set(_entries(model, include_head=has_head), sd, arch, origin)
    model.eval()
    model.has_imported_head = has_head
    return model


def to_torchvision(model: VGG, *, as_numpy: bool = False) -> "collections.OrderedDict[str, Any]":
    """The torchvision state dict of ``model`` (``fc`` or ``fc_conv`` head), the exact inverse
    of :func:`from_torchvision`.

    Keys and shapes are those of ``torchvision.models.<arch>(num_classes=...)``
    (``load_state_dict`` accepts it for full-width models); BatchNorm's
    ``num_batches_tracked`` is 0. Values are ``torch.Tensor`` (float32, contiguous) or,
    with ``as_numpy``, numpy arrays. A ``gap`` head has no torchvision equivalent and
    raises ConfigError.
    """
    if _fc_head(model) is None:
        raise ConfigError(
            "to_torchvision needs an 'fc' or 'fc_conv' head (torchvision's classifier); "
            "this model has a 'gap' head"
        )
    out: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for e in _entries(model):
        if e.variable is None:
            out[e.key] = np.array(0, np.int64)
        else:
            out[e.key] = np.array(
                e.to_torch(np.asarray(e.variable.get_value())), order="C"
            )  # writable, contiguous
    if as_numpy:
        return out
    import torch

    return collections.OrderedDict((k, torch.from_numpy(v)) for k, v in out.items())
