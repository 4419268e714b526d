"""Frozen (non-trainable) parameters.

A frozen weight is stored as a :class:`Frozen` variable instead of an ``nnx.Param``. The
trainer differentiates and updates only ``nnx.Param`` leaves, so frozen weights never
change; :func:`vggjax.summary` counts them as "Non-trainable params"; checkpoints keep
them like any other state. This is PyTorch's ``requires_grad = False``, made a type.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

from flax import nnx

from vggjax.errors import ConfigError


class Frozen(nnx.Variable):
    """A parameter that is not trained (excluded from gradients and the optimizer)."""


def _param_paths(model: nnx.Module, kind: type) -> list[tuple[str, nnx.Module, str]]:
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            for attr, value in list(vars(node).items()):
                if type(value) is kind:
                    prefix = "/".join(map(str, path))
                    out.append(((prefix + "/" if prefix else "") + attr, node, attr))
    return out


def _convert(model: nnx.Module, patterns: str | Iterable[str], src: type, dst: type) -> list[str]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    changed = []
    for path, node, attr in _param_paths(model, src):
        if any(fnmatch.fnmatchcase(path, p) for p in patterns):
            setattr(node, attr, dst(getattr(node, attr).get_value()))
            changed.append(path)
    if patterns and not changed and not _param_paths(model, dst):
        raise ConfigError(
            f"no parameter path matches {patterns}; paths look like "
            f"{', '.join(p for p, _, _ in _param_paths(model, src)[:3])}"
        )
    return changed


def freeze(model: nnx.Module, patterns: str | Iterable[str] = "*") -> list[str]:
    """Make every ``nnx.Param`` whose path (e.g. ``"features/conv1_1/kernel"``) matches a glob
    frozen.

    Returns the frozen paths. ``freeze(model, "features/*")`` freezes the backbone.
    """
    return _convert(model, patterns, nnx.Param, Frozen)


def unfreeze(model: nnx.Module, patterns: str | Iterable[str] = "*") -> list[str]:
    """Turn matching :class:`Frozen` variables back into trainable ``nnx.Param``; returns
    their paths."""
    return _convert(model, patterns, Frozen, nnx.Param)
