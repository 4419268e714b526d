"""Starting a run from another run's weights (``--config.init_from``): locate the
checkpoint, then read only the parameters that fit the new model.

A weight frozen in one run and trainable in the other is the same weight, and a fully
connected kernel ``(kh·kw·C, K)`` is the same layer as a ``(kh, kw, C, K)`` convolution
kernel at the same path, so ``fc`` and ``fc_conv`` heads load into each other.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from vggjax.checkpoint.checkpointer import _STATE, Checkpointer, _abs_path
from vggjax.checkpoint.trees import (
    Path,
    PyTree,
    _bind_abstract_shardings,
    _flat_shapes,
    _flat_with_paths,
    _name,
    _stored_shape,
)
from vggjax.errors import CheckpointError

_TWINS = {"params": "frozen", "frozen": "params"}  # trainable vs frozen halves of the weights

log = logging.getLogger("vggjax.checkpoint")  # one logger for the whole package


def locate_init_from(directory: str | os.PathLike) -> tuple[epath.Path, int | None]:
    """``(checkpoint directory, step or None)`` for an ``init_from`` path, or a one-line
    CheckpointError.

    Accepts a trainer workdir (its ``checkpoints/``), a checkpoint directory, or one step
    directory of it. Only looks at directory names (cheap: the trainer calls it before
    building anything, so a wrong path fails at once).
    """
    root = _abs_path(directory)
    if not root.exists():
        raise CheckpointError(
            f"--config.init_from={directory}: no such directory; "
            "point it at the --workdir of an earlier run"
        )
    if not root.is_dir():
        raise CheckpointError(
            f"--config.init_from={directory} is a file, not a vggjax run directory; "
            "point it at the --workdir of an earlier run "
            "(PyTorch or Keras weights: convert them with vggjax.convert first)"
        )
    if (root / _STATE).is_dir() and root.name.isdigit():
        return root.parent, int(root.name)
    if (root / "checkpoints").is_dir():  # a trainer workdir or a `vggjax.convert` output
        return root / "checkpoints", None
    if not any(p.name.isdigit() for p in root.iterdir()):
        raise CheckpointError(
            f"--config.init_from={directory} holds no vggjax checkpoint (no checkpoints/ folder); "
            "point it at the --workdir of an earlier run"
        )
    return root, None


def restore_params_from(
    directory: str | os.PathLike,
    target: PyTree,
    *,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[PyTree, list[str]]:
    """Load the leaves of ``target`` that another run's checkpoint has with the same shape.

    One reshape is made: a fully connected kernel ``(kh·kw·C, K)`` and a convolution
    kernel ``(kh, kw, C, K)`` at the same path are the same layer (FC as convolution, in
    the NHWC flatten order that :meth:`vggjax.ConvHead.from_fc` uses), so weights of an
    ``fc`` head load into an ``fc_conv`` head and back.

    ``directory`` is that run's workdir (its newest readable step is used unless
    ``step``) or one step directory of it. ``target`` is a freshly initialised pytree
    whose paths name parts of the saved state, e.g. ``{"params": params, "batch_stats":
    batch_stats}`` with keys named like the trainer state's fields. Only those arrays
    are read (the optimizer state is not). Returns ``(tree, skipped)``: ``tree`` is
    ``target`` with every matching leaf replaced by the stored values (in the target's
    dtype and sharding); ``skipped`` lists ``"path: checkpoint (a,) vs model (b,)"`` or
    ``"path: not in checkpoint"`` for leaves kept at their fresh value (a new head).
    Raises CheckpointError if nothing matches or no step can be read.
    """
    root, found_step = locate_init_from(directory)
    step = found_step if step is None else step
    bound = _bind_abstract_shardings(target, mesh)
    with Checkpointer(root, read_only=True) as ckpt:
        tree, skipped = ckpt._with_fallback(
            step, lambda s: _load_matching(ckpt, s, root, target, bound)
        )
    if skipped:
        log.warning(
            "init_from %s: kept %d leaves at their fresh init: %s",
            root,
            len(skipped),
            "; ".join(skipped),
        )
    return tree, skipped


def _load_matching(
    ckpt: Checkpointer, s: int, root: epath.Path, target: PyTree, bound: PyTree
) -> tuple[PyTree, list[str]]:
    """Step ``s`` of ``ckpt`` read into ``target`` (``bound``: its shardings bound to a mesh)
    where the shapes fit: ``(tree, skipped)`` as :func:`restore_params_from` returns them."""
    stored = _flat_shapes(ckpt._stored_tree(s))
    flat = _flat_with_paths(bound)
    take, source, skipped, reshaped = _match(flat, stored)
    if not take:
        example = _name(flat[0][0]) if flat else "(empty target)"
        raise CheckpointError(
            f"nothing in {ckpt.directory} step {s} matches the model "
            f"(e.g. {example} is not there); "
            "point --config.init_from at a vggjax workdir of a related model"
        )
    got = _read_partial(ckpt._step_dir(s) / _STATE, take)
    leaves = [
        _fit(got[source[p]], b) if p in source else leaf
        for (p, leaf), (_, b) in zip(_flat_with_paths(target), flat)
    ]
    if reshaped:
        log.info(
            "init_from %s: FC layers read as convolutions or back (same weights): %s",
            root,
            "; ".join(reshaped),
        )
    return jax.tree_util.tree_structure(target).unflatten(leaves), skipped


def _match(
    flat: list[tuple[Path, Any]], stored: dict[Path, tuple[int, ...]]
) -> tuple[dict[Path, Any], dict[Path, Path], list[str], list[str]]:
    """Which target leaves to read: ``(take, source, skipped, reshaped)``.

    ``take`` maps stored paths to the abstract arrays to read them as, ``source`` target
    paths to the stored paths they come from; ``skipped`` and ``reshaped`` describe the
    leaves kept at their fresh value and those read as FC <-> conv, for the logs.
    """
    take: dict[Path, Any] = {}
    skipped: list[str] = []
    reshaped: list[str] = []
    source: dict[Path, Path] = {}  # target path -> stored path
    for path, leaf in flat:
        want = _stored_shape(leaf)
        # A weight frozen in one run and trainable in the other is the same weight.
        twin = _TWINS.get(path[0]) if path else None
        src = path if path in stored or twin is None else (twin,) + path[1:]
        have = stored.get(src)
        if have is None:
            skipped.append(f"{_name(path)}: not in checkpoint")
        elif have == want:
            take[src], source[path] = _as_abstract(leaf), src
        elif _fc_as_conv(have, want):
            take[src], source[path] = _replicated_abstract(leaf, have), src
            reshaped.append(f"{_name(path)}: checkpoint {have} -> model {want}")
        else:
            skipped.append(f"{_name(path)}: checkpoint {have} vs model {want}")
    return take, source, skipped, reshaped


def _read_partial(state_dir: epath.Path, take: dict[Path, Any]) -> dict[Path, Any]:
    """Only the arrays ``take`` names from the ``state`` item in ``state_dir``, flat."""
    item = ocp.tree.from_flat_dict(take)
    # Partial restore reads only the requested arrays; StandardRestore cannot skip leaves.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        restored = reader.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
    return ocp.tree.to_flat_dict(restored)


def _fc_as_conv(have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether a stored kernel and a model kernel are one layer as FC ``(kh·kw·C, K)`` and
    conv ``(kh, kw, C, K)``."""
    if len(have) == 2 and len(want) == 4:
        have, want = want, have
    return (
        len(have) == 4 and len(want) == 2 and math.prod(have[:3]) == want[0] and have[3] == want[1]
    )


def _replicated_abstract(leaf: Any, shape: tuple[int, ...]) -> Any:
    """``leaf`` as the stored ``shape`` to read (replicated on the leaf's mesh; it is
    reshaped after reading)."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    elif sharding is not None and not sharding.is_fully_replicated:
        sharding = None  # orbax places it as saved
    return jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=sharding)


def _fit(value: Any, leaf: Any) -> Any:
    """``value`` read from the checkpoint, reshaped (FC <-> conv) and placed like ``leaf``
    (the bound target leaf) where their shapes differ."""
    shape = getattr(leaf, "shape", None)
    if shape is None or tuple(value.shape) == tuple(shape):
        return value
    value = value.reshape(shape)
    sharding = getattr(leaf, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else value


def _as_abstract(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return leaf
