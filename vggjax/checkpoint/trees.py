"""Pytrees against checkpoints: leaf paths as orbax stores them, stored shapes, finiteness,
and the one-line messages that name the leaves.

Orbax stores a pytree under its key paths ("params", "head", "kernel", "value"); every
comparison between a target tree and a stored one goes through these path tuples.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from vggjax.diagnostics import finite_flags
from vggjax.errors import CheckpointError

_finite_flags = jax.jit(finite_flags)  # one program for all the leaves

PyTree = Any
Path = tuple[str, ...]

_SHOW = 3  # how many offending paths an error message lists before "and N more"


def nonfinite_paths(tree: PyTree) -> list[str]:
    """Names of the floating leaves of ``tree`` holding NaN or Inf; [] when all finite.

    One jitted reduction over all floating leaves (sharded arrays stay where they are),
    then a transfer of one flag per leaf.
    """
    flat = [(p, x) for p, x in _flat_with_paths(tree) if _is_float(x)]
    if not flat:
        return []
    flags = _finite_flags([x for _, x in flat])
    if not flags.is_fully_addressable:  # multi-host: collect the flags on every process
        flags = multihost_utils.process_allgather(flags, tiled=True)
    flags = np.asarray(flags)
    return [_name(p) for (p, _), ok in zip(flat, flags) if not ok]


def _is_float(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return (
        dtype is not None
        and not isinstance(x, jax.ShapeDtypeStruct)
        and jnp.issubdtype(dtype, jnp.inexact)
    )


def _flat_with_paths(tree: PyTree) -> list[tuple[Path, Any]]:
    # The same path strings orbax stores ("params", "head", "kernel", "value").
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(ocp.utils.tuple_path_from_keypath(p), x) for p, x in flat]


def _flat_shapes(stored_tree: PyTree) -> dict[Path, tuple[int, ...]]:
    return {
        tuple(p): tuple(getattr(m, "shape", None) or ())
        for p, m in ocp.tree.to_flat_dict(stored_tree).items()
    }


def _stored_shape(leaf: Any) -> tuple[int, ...]:
    """The shape orbax stores for ``leaf``: typed PRNG keys are saved as their key data."""
    shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        shape = tuple(jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype)).shape)
    return shape


def _bind_abstract_shardings(tree: PyTree, mesh: jax.sharding.Mesh | None) -> PyTree:
    """Give ``ShapeDtypeStruct`` leaves whose sharding lives on an abstract mesh a real one.

    ``jax.eval_shape`` returns NamedShardings over an ``AbstractMesh``, which orbax cannot
    place data on. They are rebound to ``mesh`` (or the mesh from ``jax.set_mesh``) when
    its axes match; otherwise the sharding is dropped and orbax uses the saved one.
    """
    if mesh is None:
        current = jax.sharding.get_mesh()
        mesh = None if current.empty else current

    def bind(x: Any) -> Any:
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        s = x.sharding
        if not isinstance(s, jax.sharding.NamedSharding) or not isinstance(
            s.mesh, jax.sharding.AbstractMesh
        ):
            return x
        if mesh is not None and mesh.shape_tuple == s.mesh.shape_tuple:
            new = jax.sharding.NamedSharding(mesh, s.spec)
        else:
            new = None
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=new, weak_type=x.weak_type)

    return jax.tree.map(bind, tree)


def _raise_on_mismatch(
    stored_tree: PyTree, target: PyTree, step: int, directory: epath.Path
) -> None:
    have = _flat_shapes(stored_tree)
    want = {p: _stored_shape(x) for p, x in _flat_with_paths(target)}
    shapes = [
        f"{_name(p)} {have[p]} in checkpoint vs {s} in model"
        for p, s in want.items()
        if p in have and have[p] != s
    ]
    missing = [f"{_name(p)} missing from checkpoint" for p in want if p not in have]
    extra = [f"{_name(p)} only in checkpoint" for p in have if p not in want]
    problems = shapes + missing + extra
    if problems:
        raise CheckpointError(
            f"checkpoint step {step} in {directory} does not fit this model, "
            f"{len(problems)} mismatched: {_listing(problems)}; "
            "this workdir belongs to another architecture or class count: use a new "
            f"--workdir, or --config.init_from={directory} to start from its weights"
        )


def _name(path: Path) -> str:
    # nnx stores each Variable's array under a trailing "value" key; it is noise in messages.
    if len(path) > 1 and path[-1] == "value":
        path = path[:-1]
    return ".".join(path)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown if len(items) <= _SHOW else f"{shown} and {len(items) - _SHOW} more"


def _first_line(e: BaseException | None) -> str:
    text = str(e).strip().splitlines()[0] if e is not None and str(e).strip() else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
