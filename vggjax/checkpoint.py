"""Checkpoints: a small wrapper around orbax's ``CheckpointManager``.

A checkpoint step directory holds two items: ``state`` (any pytree of arrays: the
trainer's state dataclass with step, params, batch stats, rng keys and optimizer state;
sharded or replicated ``jax.Array`` leaves are written and read back shard-wise) and
``meta`` (a small JSON dict: data position, the config, a model fingerprint).

What this adds to orbax:

* Saves are asynchronous by default; saving a step that already exists is a no-op.
* ``save`` refuses to write a state with NaN/Inf in a floating leaf (one jitted
  reduction over the state), so a diverged run never overwrites good checkpoints.
* ``restore`` compares the checkpoint's stored tree metadata (paths and shapes, read
  without loading any array) with the target before loading, and raises a one-line
  :class:`~vggjax.errors.CheckpointError` naming the mismatched parameters when the
  workdir belongs to another architecture or class count.
* ``restore`` with no step falls back to the newest *readable* step when the latest
  one is damaged (truncated or deleted array files), with a warning; the skipped steps
  are in :attr:`Checkpointer.damaged_steps`. Orbax itself never lists uncommitted
  (half-written, ``*.orbax-checkpoint-tmp*``) step directories and deletes them on open.
* A save that fails while writing (a full disk, a lost mount) raises a one-line
  :class:`~vggjax.errors.CheckpointError` naming the step, the reason and the last
  committed step. Old steps are only removed after the new one is committed, so the
  previous checkpoint is still there (orbax's finalize thread stops at the failed write
  before its garbage collection; a test in ``tests/test_reliability.py`` holds it to that).
* :func:`restore_params_from` loads only matching parameters from another run (used by
  ``--config.init_from``), keeping layers whose shape changed (a new classifier head)
  at their fresh initialisation.

All public methods must be called by every process of a multi-host job (orbax
synchronises the processes and writes shared files from the primary one).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from vggjax.diagnostics import finite_flags
from vggjax.errors import CheckpointError

_finite_flags = jax.jit(finite_flags)  # one program for all the leaves

__all__ = ["Checkpointer", "locate_init_from", "restore_params_from"]

PyTree = Any
Path = tuple[str, ...]
_T = TypeVar("_T")

_STATE = "state"
_META = "meta"
_SHOW = 3  # how many offending paths an error message lists before "and N more"
_TWINS = {"params": "frozen", "frozen": "params"}  # trainable vs frozen halves of the weights

log = logging.getLogger(__name__)


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    # Registering the handlers up front (rather than letting orbax infer them from the
    # first save/restore call) lets a fresh manager read a step's metadata before any
    # restore, which the shape check needs.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(_STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    registry.add(_META, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(_META, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return registry


def _abs_path(directory: str | os.PathLike) -> epath.Path:
    text = os.fspath(directory)
    # Orbax wants absolute paths; remote URLs (gs://...) already are.
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


class Checkpointer:
    """Saves and restores a training state pytree plus a JSON ``meta`` dict in ``directory``.

    One step directory ``<directory>/<step>`` per checkpoint; the newest ``max_to_keep``
    are kept (``None`` keeps all). ``save`` writes only steps that are multiples of
    ``save_interval_steps`` (or at a preemption sync point, or with ``force=True``).
    With ``async_save`` the arrays are copied off the devices before ``save`` returns
    (so the caller may donate or delete them) and written in a background thread; call
    :meth:`wait` (or :meth:`close`, or leave the ``with`` block) to block until the step
    is committed. ``check_finite`` makes ``save`` refuse states with NaN/Inf values.
    ``read_only`` opens another run's directory for restoring without touching it.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
        check_finite: bool = True,
        read_only: bool = False,
    ) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise CheckpointError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
        if save_interval_steps < 1:
            raise CheckpointError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        self._check_finite = check_finite
        self._read_only = read_only
        # Steps newer than the one `restore` fell back to that could not be read; they are
        # deleted on the next save so the run can write those step numbers again.
        self._unreadable: set[int] = set()
        # Newer steps the last `restore` skipped because they could not be read.
        self.damaged_steps: list[int] = []
        self._writing: int | None = None  # the step an async save is writing
        self._write_failed = False  # a failed write was reported; close() must not raise it again
        options = ocp.CheckpointManagerOptions(
            # The non-deprecated spellings of save_interval_steps / max_to_keep.
            save_decision_policy=ocm.AnySavePolicy(
                [
                    ocm.FixedIntervalPolicy(save_interval_steps),
                    ocm.PreemptionCheckpointingPolicy(),
                ]
            ),
            preservation_policy=ocm.LatestN(max_to_keep),
            enable_async_checkpointing=async_save,
            read_only=read_only,
            save_interval_steps=0
            if read_only
            else 1,  # unused (policy above); 0 avoids a read-only warning
            create=not read_only,
            # Remove tmp dirs a killed run left behind (orbax never lists them as steps).
            cleanup_tmp_directories=not read_only,
        )
        self._mngr = ocp.CheckpointManager(
            _abs_path(directory), options=options, handler_registry=_handler_registry()
        )

    # ------------------------------------------------------------------ queries

    @property
    def directory(self) -> epath.Path:
        """The absolute directory holding the step directories."""
        return self._mngr.directory

    def all_steps(self) -> list[int]:
        """Committed steps in this directory, oldest first (in-flight saves included)."""
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None for an empty directory (a fresh run)."""
        return self._mngr.latest_step()

    def should_save(self, step: int) -> bool:
        """True when :meth:`save` at ``step`` (without ``force``) would write: on the interval or at a preemption point."""
        latest = self.latest_step()
        return (latest is None or step > latest) and self._mngr.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True when the job is being preempted: save now (it will be written) and exit."""
        return self._mngr.reached_preemption(step)

    # --------------------------------------------------------------------- save

    def save(
        self,
        step: int,
        state: PyTree,
        meta: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Start saving ``state`` (any pytree of arrays) and JSON ``meta`` as ``step``.

        Returns True if a save was started; False if ``step`` is not a multiple of
        ``save_interval_steps`` (unless ``force``), or not newer than the latest step
        (saving a step again is a no-op). Raises CheckpointError, writing nothing, when a
        floating leaf of ``state`` is NaN/Inf (with ``check_finite``) or ``meta`` is not
        JSON-serialisable. Asynchronous: see :meth:`wait`.
        """
        step = int(step)
        if self._read_only:
            raise CheckpointError(
                f"{self.directory} was opened read-only; open a Checkpointer without read_only=True to save"
            )
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint meta is not JSON-serialisable ({e}); pass plain dicts, lists, strings and numbers (e.g. config.to_dict())"
            ) from None
        self._drop_unreadable_steps()
        latest = self.latest_step()
        if latest is not None and step <= latest:
            if step < latest:
                log.warning(
                    "not saving step %d: %s already holds the newer step %d",
                    step,
                    self.directory,
                    latest,
                )
            return False
        if not force and not self._mngr.should_save(step):
            return False
        if self._check_finite:
            bad = nonfinite_paths(state)
            if bad:
                raise CheckpointError(
                    f"refusing to save step {step}: non-finite values in {_listing(bad)}; "
                    "the run diverged: lower the learning rate or fix the initialisation and "
                    "resume from the last good checkpoint"
                )
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
        )
        # should_save was decided above (force skips it), so let orbax write unconditionally.
        # Orbax first waits for the previous async save, whose write error surfaces here.
        try:
            started = self._mngr.save(step, args=args, force=True)
        except Exception as e:  # noqa: BLE001 - tensorstore/OS errors come in many types
            raise self._write_error(self._writing if self._writing is not None else step, e) from e
        self._writing = step if started else self._writing
        return started

    def _write_error(self, step: int, e: BaseException) -> CheckpointError:
        """The one-line error for a failed write of ``step`` (the previous steps are intact)."""
        self._writing = None
        self._write_failed = True
        try:
            self._mngr.reload()  # forget the step that never got committed
        except Exception:  # noqa: BLE001 - best effort: the message matters more
            pass
        committed = [s for s in self._mngr.all_steps() if s != step]
        last = (
            f"the last committed checkpoint, step {max(committed)}, is intact"
            if committed
            else "no earlier checkpoint exists"
        )
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
        return CheckpointError(
            f"could not write checkpoint step {step} to {self.directory}: {reason}; {last}: "
            "free disk space (or fix the directory) and rerun the same command to resume"
        )

    def _drop_unreadable_steps(self) -> None:
        if not self._unreadable:
            return
        for s in sorted(self._unreadable):
            if s in self._mngr.all_steps():
                log.warning("deleting unreadable checkpoint step %d in %s", s, self.directory)
                self._mngr.delete(s)
        self._unreadable.clear()

    def wait(self) -> None:
        """Block until every started save is committed to disk.

        Raises CheckpointError (one line: step, reason, last committed step) when the
        background write failed, e.g. ``[Errno 28] No space left on device``.
        """
        try:
            self._mngr.wait_until_finished()
            self._mngr.check_for_errors()
        except Exception as e:  # noqa: BLE001
            if self._writing is None:
                raise
            raise self._write_error(self._writing, e) from e
        self._writing = None

    def close(self) -> None:
        """Wait for pending saves and release orbax's background resources (a failed write raises as in :meth:`wait`)."""
        try:
            self._mngr.close()
        except Exception as e:  # noqa: BLE001
            if self._writing is not None:
                raise self._write_error(self._writing, e) from e
            if not self._write_failed:
                raise
        self._writing = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ restore

    def restore(
        self,
        abstract_state: PyTree,
        step: int | None = None,
        *,
        mesh: jax.sharding.Mesh | None = None,
    ) -> tuple[PyTree, dict[str, Any]]:
        """Load ``step`` (default: the newest readable one) into the structure of ``abstract_state``.

        ``abstract_state`` is the target pytree: concrete arrays or ``jax.ShapeDtypeStruct``
        leaves (e.g. from ``jax.eval_shape``); restored arrays get each leaf's sharding
        and dtype. Shardings on an abstract mesh (what ``jax.eval_shape`` gives in this jax)
        are bound to ``mesh`` or the mesh set by ``jax.set_mesh``; leaves without one get
        the sharding they were saved with. Returns ``(state, meta)``. Raises CheckpointError
        if there is no checkpoint, if its parameter paths or shapes differ from the target
        (another architecture or class count), or if no step can be read. A damaged latest
        step is skipped with a warning when ``step`` is None.
        """
        target = _bind_abstract_shardings(abstract_state, mesh)

        def load(s: int) -> tuple[PyTree, dict[str, Any]]:
            _raise_on_mismatch(self._stored_tree(s), target, s, self.directory)
            restored = self._mngr.restore(
                s,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()}
                ),
            )
            return restored[_STATE], dict(restored[_META] or {})

        return self._with_fallback(step, load)

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """Only the JSON ``meta`` of ``step`` (default: the newest readable step); no arrays."""

        def load(s: int) -> dict[str, Any]:
            restored = self._mngr.restore(
                s, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
            return dict(restored[_META] or {})

        return self._with_fallback(step, load)

    def _stored_tree(self, step: int) -> PyTree:
        """The saved state's tree of ``ArrayMetadata`` (shapes, dtypes); reads no arrays."""
        return self._mngr.item_metadata(step)[_STATE].tree

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _with_fallback(self, step: int | None, load: Callable[[int], _T]) -> _T:
        self.wait()
        if step is not None:
            if step not in self._mngr.all_steps():
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory} (steps: {self.all_steps() or 'none'}); pick one of those or omit the step"
                )
            try:
                return load(step)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
                raise CheckpointError(
                    f"cannot read checkpoint step {step} in {self.directory}: {_first_line(e)}; restore another step or start a new --workdir"
                ) from e
        steps = sorted(self._mngr.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {self.directory}; train a run with this --workdir first, or point at a workdir that has one"
            )
        failed: list[int] = []
        last_error: Exception | None = None
        self.damaged_steps = []
        for s in steps:
            try:
                result = load(s)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - damaged files surface as many error types
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s); trying the previous step",
                    s,
                    self.directory,
                    _first_line(e),
                )
                failed.append(s)
                last_error = e
                continue
            if failed:
                log.warning(
                    "restored step %d from %s instead of the damaged newer step(s) %s",
                    s,
                    self.directory,
                    ", ".join(map(str, failed)),
                )
                self._unreadable.update(failed)
                self.damaged_steps = failed
            return result
        raise CheckpointError(
            f"no readable checkpoint in {self.directory} (tried steps {', '.join(map(str, failed))}; "
            f"last error: {_first_line(last_error)}); start a new --workdir"
        ) from last_error


# --------------------------------------------------------------------- init_from


def locate_init_from(directory: str | os.PathLike) -> tuple[epath.Path, int | None]:
    """``(checkpoint directory, step or None)`` for an ``init_from`` path, or a one-line CheckpointError.

    Accepts a trainer workdir (its ``checkpoints/``), a checkpoint directory, or one step
    directory of it. Only looks at directory names (cheap: the trainer calls it before
    building anything, so a wrong path fails at once).
    """
    root = _abs_path(directory)
    if not root.exists():
        raise CheckpointError(
            f"--config.init_from={directory}: no such directory; point it at the --workdir of an earlier run"
        )
    if not root.is_dir():
        raise CheckpointError(
            f"--config.init_from={directory} is a file, not a vggjax run directory; point it at the --workdir of an "
            "earlier run (PyTorch or Keras weights: convert them with vggjax.convert first)"
        )
    if (root / _STATE).is_dir() and root.name.isdigit():
        return root.parent, int(root.name)
    if (root / "checkpoints").is_dir():  # a trainer workdir or a `vggjax.convert` output
        return root / "checkpoints", None
    if not any(p.name.isdigit() for p in root.iterdir()):
        raise CheckpointError(
            f"--config.init_from={directory} holds no vggjax checkpoint (no checkpoints/ folder); point it at the --workdir of an earlier run"
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

        def load(s: int) -> tuple[PyTree, list[str]]:
            stored = _flat_shapes(ckpt._stored_tree(s))
            flat = _flat_with_paths(bound)
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
            if not take:
                example = _name(flat[0][0]) if flat else "(empty target)"
                raise CheckpointError(
                    f"nothing in {ckpt.directory} step {s} matches the model (e.g. {example} is not there); "
                    "point --config.init_from at a vggjax workdir of a related model"
                )
            item = ocp.tree.from_flat_dict(take)
            # Partial restore reads only the requested arrays; StandardRestore cannot skip leaves.
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
                restored = reader.restore(
                    ckpt._step_dir(s) / _STATE,
                    args=ocp.args.PyTreeRestore(
                        item=item,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                        partial_restore=True,
                    ),
                )
            got = ocp.tree.to_flat_dict(restored)
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

        tree, skipped = ckpt._with_fallback(step, load)
    if skipped:
        log.warning(
            "init_from %s: kept %d leaves at their fresh init: %s",
            root,
            len(skipped),
            "; ".join(skipped),
        )
    return tree, skipped


# ------------------------------------------------------------------- helpers


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


def _fc_as_conv(have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether a stored kernel and a model kernel are one layer as FC ``(kh·kw·C, K)`` and conv ``(kh, kw, C, K)``."""
    if len(have) == 2 and len(want) == 4:
        have, want = want, have
    return (
        len(have) == 4 and len(want) == 2 and math.prod(have[:3]) == want[0] and have[3] == want[1]
    )


def _replicated_abstract(leaf: Any, shape: tuple[int, ...]) -> Any:
    """``leaf`` as the stored ``shape`` to read (replicated on the leaf's mesh; it is reshaped after reading)."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    elif sharding is not None and not sharding.is_fully_replicated:
        sharding = None  # orbax places it as saved
    return jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=sharding)


def _fit(value: Any, leaf: Any) -> Any:
    """``value`` read from the checkpoint, reshaped (FC <-> conv) and placed like ``leaf`` (the bound target leaf)
    where their shapes differ."""
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
            f"checkpoint step {step} in {directory} does not fit this model, {len(problems)} mismatched: "
            f"{_listing(problems)}; this workdir belongs to another architecture or class count: use a new "
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
