"""The :class:`Checkpointer`: orbax's ``CheckpointManager`` with one-line errors, refusal of
non-finite states, and restores that check shapes first and skip damaged steps."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from vggjax.checkpoint.trees import (
    PyTree,
    _bind_abstract_shardings,
    _first_line,
    _listing,
    _raise_on_mismatch,
    nonfinite_paths,
)
from vggjax.errors import CheckpointError

_T = TypeVar("_T")

_STATE = "state"
_META = "meta"

log = logging.getLogger("vggjax.checkpoint")  # one logger for the whole package


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
        options = _manager_options(max_to_keep, save_interval_steps, async_save, read_only)
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
        """True when :meth:`save` at ``step`` (without ``force``) would write: on the interval
        or at a preemption point."""
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
                f"{self.directory} was opened read-only; "
                "open a Checkpointer without read_only=True to save"
            )
        meta = _json_meta(meta)
        self._drop_unreadable_steps()
        if not self._is_newer(step):
            return False
        if not force and not self._mngr.should_save(step):
            return False
        if self._check_finite:
            _refuse_nonfinite(step, state)
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

    def _is_newer(self, step: int) -> bool:
        """Whether ``step`` is newer than the latest step (saving a step again is a no-op)."""
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
        return True

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
        """Wait for pending saves and release orbax's background resources (a failed write
        raises as in :meth:`wait`)."""
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
        """Load ``step`` (default: the newest readable one) into the structure of
        ``abstract_state``.

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
            return self._load_step(step, load)
        return self._load_newest_readable(load)

    def _load_step(self, step: int, load: Callable[[int], _T]) -> _T:
        """``load(step)``, with a missing or damaged step as a one-line CheckpointError."""
        if step not in self._mngr.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} "
                f"(steps: {self.all_steps() or 'none'}); pick one of those or omit the step"
            )
        try:
            return load(step)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
            raise CheckpointError(
                f"cannot read checkpoint step {step} in {self.directory}: {_first_line(e)}; "
                "restore another step or start a new --workdir"
            ) from e

    def _load_newest_readable(self, load: Callable[[int], _T]) -> _T:
        """``load`` of the newest step it can read, newest first; the unreadable newer steps
        are remembered (deleted on the next save) and logged."""
        steps = sorted(self._mngr.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {self.directory}; train a run with this --workdir first, "
                "or point at a workdir that has one"
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
            f"no readable checkpoint in {self.directory} "
            f"(tried steps {', '.join(map(str, failed))}; "
            f"last error: {_first_line(last_error)}); start a new --workdir"
        ) from last_error


def _manager_options(
    max_to_keep: int | None, save_interval_steps: int, async_save: bool, read_only: bool
) -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(
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
        # Unused (the policy above decides); 0 avoids a read-only warning.
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        # Remove tmp dirs a killed run left behind (orbax never lists them as steps).
        cleanup_tmp_directories=not read_only,
    )


def _json_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """``meta`` as a dict, or a CheckpointError when it is not JSON-serialisable."""
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint meta is not JSON-serialisable ({e}); "
            "pass plain dicts, lists, strings and numbers (e.g. config.to_dict())"
        ) from None
    return meta


def _refuse_nonfinite(step: int, state: PyTree) -> None:
    bad = nonfinite_paths(state)
    if bad:
        raise CheckpointError(
            f"refusing to save step {step}: non-finite values in {_listing(bad)}; "
            "the run diverged: lower the learning rate or fix the initialisation and "
            "resume from the last good checkpoint"
        )
