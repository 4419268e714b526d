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

Modules: ``checkpointer`` (:class:`Checkpointer`), ``init_from``
(:func:`locate_init_from`, :func:`restore_params_from`) and ``trees`` (leaf paths,
stored shapes, :func:`nonfinite_paths`). Everything logs to the ``vggjax.checkpoint``
logger.
"""

from vggjax.checkpoint.checkpointer import Checkpointer
from vggjax.checkpoint.init_from import locate_init_from, restore_params_from
from vggjax.checkpoint.trees import nonfinite_paths  # noqa: F401 - public here too

__all__ = ["Checkpointer", "locate_init_from", "restore_params_from"]
