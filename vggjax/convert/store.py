"""Converted weights on disk: a vggjax checkpoint that the trainer fine-tunes from and that
:func:`load` turns back into a model.

The layout is the trainer's (``DIRECTORY/checkpoints/0/`` with ``params`` and
``batch_stats``), so ``python -m vggjax.train --config.init_from=DIRECTORY`` reads it like
any earlier run; the stored description (``meta``, format :data:`FORMAT`) holds what
rebuilding the architecture needs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from flax import nnx

from vggjax.convert.common import _skeleton
from vggjax.convert.fc_conv import _rebuild_options
from vggjax.errors import CheckpointError
from vggjax.freeze import Frozen
from vggjax.models.heads import ConvHead, FCHead
from vggjax.models.vgg import ARCHS, VGG

FORMAT = "vggjax.convert/1"


def _weights_tree(model: VGG, include_head: bool) -> dict[str, Any]:
    params = nnx.state(model, nnx.Param)
    frozen = nnx.state(model, Frozen)
    stats = nnx.state(model, nnx.BatchStat)
    tree: dict[str, Any] = {}
    for key, state in (("params", params), ("frozen", frozen), ("batch_stats", stats)):
        if not include_head and "head" in state:
            del state["head"]
        if jax.tree.leaves(state):
            tree[key] = state
    return tree


def _head_options(head: Any) -> dict[str, Any]:
    """The options that rebuild an ``fc`` or ``fc_conv`` head ({} for the others)."""
    if isinstance(head, FCHead):
        return {
            "hidden": int(head.fc7.kernel.get_value().shape[0]),
            "pool_size": head.pool_size,
        }
    if isinstance(head, ConvHead):
        return {
            "hidden": int(head.fc7.kernel.get_value().shape[-1]),
            "kernel_size": head.kernel_size,
        }
    return {}


def _description(model: VGG, include_head: bool, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stored ``meta``: what :func:`load` rebuilds the model from, plus ``meta``."""
    opts = _rebuild_options(model)
    return {
        "format": FORMAT,
        "arch": model.name if model.name in ARCHS else None,
        "cfg": opts["cfg"],
        "batch_norm": opts["batch_norm"],
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "head": model.head_name,
        "head_options": _head_options(model.head),
        "width": (opts["cfg"][0] / 64) if opts["cfg"] else 1.0,
        "has_head": bool(include_head),
        "parameters": int(
            sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, Frozen))))
        ),
        **dict(meta or {}),
    }


def save(
    model: VGG,
    directory: str | os.PathLike,
    *,
    meta: Mapping[str, Any] | None = None,
    include_head: bool | None = None,
) -> str:
    """Write ``model``'s weights as a vggjax checkpoint in ``directory`` (returns its absolute
    path).

    Layout: ``directory/checkpoints/0/`` with the trainer's state names (``params``,
    ``batch_stats``), so ``python -m vggjax.train --config.init_from=DIRECTORY`` starts from
    it (layers whose shape changed, e.g. a new class count, keep their fresh init) and
    :func:`load` rebuilds the model. ``include_head`` (default: whether the weights came
    with a head) leaves the head out for headless imports. ``meta`` adds JSON fields to
    the stored description (arch, head, options, source). Refuses a non-empty directory.
    """
    from vggjax.checkpoint import Checkpointer

    directory = os.path.abspath(os.fspath(directory))
    if os.path.isdir(directory) and os.listdir(directory):
        raise CheckpointError(
            f"--output {directory} exists and is not empty; choose a new directory"
        )
    if include_head is None:
        include_head = getattr(model, "has_imported_head", True)
    info = _description(model, include_head, meta)
    with Checkpointer(
        os.path.join(directory, "checkpoints"), max_to_keep=None, async_save=False
    ) as ckpt:
        ckpt.save(0, _weights_tree(model, include_head), info, force=True)
        ckpt.wait()
    return directory


def load(directory: str | os.PathLike, *, seed: int = 0) -> VGG:
    """Rebuild the model that :func:`save` (or ``python -m vggjax.convert``) wrote to
    ``directory``, in eval mode.

    The architecture comes from the stored description; the weights are read with
    :func:`vggjax.checkpoint.restore_params_from`. A headless conversion gets a freshly
    initialised ``fc`` head. Raises CheckpointError when ``directory`` holds no conversion.
    """
    from vggjax.checkpoint import Checkpointer, restore_params_from

    root = os.path.join(os.path.abspath(os.fspath(directory)), "checkpoints")
    if not os.path.isdir(root):
        raise CheckpointError(
            f"{directory} holds no vggjax.convert output (no checkpoints/ directory)"
        )
    with Checkpointer(root, read_only=True) as ckpt:
        info = ckpt.read_meta()
    if info.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory} is not a vggjax.convert output (meta format {info.get('format')!r}); "
            "build the model and use restore_params_from"
        )

    def factory(rngs: nnx.Rngs, init: str = "zeros") -> VGG:
        return VGG(
            info["cfg"],
            num_classes=int(info["num_classes"]),
            batch_norm=bool(info["batch_norm"]),
            head=info["head"],
            head_options=info["head_options"],
            in_channels=int(info["in_channels"]),
            init=init,
            rngs=rngs,
            name=info.get("arch") or "VGG",
        )

    model = _skeleton(factory, seed) if info["has_head"] else factory(nnx.Rngs(seed), "torchvision")
    target = {"params": nnx.state(model, nnx.Param), "batch_stats": nnx.state(model, nnx.BatchStat)}
    tree, _ = restore_params_from(directory, target)
    nnx.update(model, tree["params"], tree["batch_stats"])
    model.eval()
    model.has_imported_head = bool(info["has_head"])
    return model
