"""The standard hooks of :func:`vggjax.training.fit`.

* :class:`MetricsLog` — ``metrics.jsonl`` + TensorBoard + the progress bar (the trainer's);
* :class:`Evaluate` — an eval pass every N steps (and at the end), plus reduce-on-plateau;
* :class:`Checkpoint` — orbax saves as the checkpointer's interval says (forced at the end / on
  stop);
* :class:`Preempt` — SIGTERM (or JAX's multi-host preemption notice) stops the loop after the
  step in flight, so the checkpoint of that step can be written;
* :class:`History` — every fetched step's scalar metrics in memory (experiments);
* :class:`Every` — call a function of ``(step, state)`` every N steps (probes, custom logs).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NoReturn, Sequence

import jax
import numpy as np

from vggjax import metrics as metrics_lib
from vggjax.training.loop import Hook, Loop, Record, host_scalars

# Per-layer arrays and indices that belong in the "diag" record or nowhere, not in "train".
NOT_TRAIN_RECORD = ("grad_norm/", "weight_", "act_", "dead_", "zero_", "nonfinite_")


class MetricsLog(Hook):
    """Write the last fetched step of each log interval as a ``train`` record (with images/s),
    the per-layer statistics of diagnostics steps as a ``diag`` record, and advance the bar."""

    def __init__(self, writer, batch_size: int, meter) -> None:
        self.writer, self.batch_size, self.meter = writer, batch_size, meter

    def on_records(self, loop: Loop, records: list[Record], diagnostics: bool) -> None:
        last = records[-1]
        rate = self.meter.lap(len(records) * self.batch_size)
        record = {**host_scalars(last.metrics, NOT_TRAIN_RECORD), "images_per_sec": rate}
        self.writer.write(last.step, "train", record)
        if diagnostics:
            from vggjax import diagnostics as diag

            self.writer.write(
                last.step,
                "diag",
                diag.to_python({k: v for k, v in last.metrics.items() if "/" in k}),
            )
        self.writer.progress(
            last.step, {"loss": record["loss"], "acc": record["accuracy"], "img/s": round(rate)}
        )


class Evaluate(Hook):
    """Evaluate every ``every`` steps and at the last (not on a stopping step); write and print it.

    With ``optim_config.schedule == "plateau"`` the evaluation accuracy feeds reduce-on-plateau
    (:func:`vggjax.optim.plateau_update`), which changes the optimizer state: the hook returns
    the new state. :attr:`last` holds the latest result.
    """

    def __init__(
        self, runner, eval_batches, every: int, writer, optim_config, timings=None
    ) -> None:
        self.runner, self.eval_batches, self.every = runner, eval_batches, every
        self.writer, self.optim_config = writer, optim_config
        self.timings = timings or metrics_lib.Timings()
        self.last: dict[str, Any] = {}

    def after_step(self, loop: Loop, step: int, state: Any) -> Any | None:
        from vggjax import optim
        from vggjax.training.runner import evaluate

        if loop.stopping or not (step % self.every == 0 or step == loop.total_steps):
            return None
        t0 = time.perf_counter()
        with self.timings.time("eval"):
            self.last = evaluate(self.runner, state, self.eval_batches)
        self.writer.write(step, "eval", {**self.last, "seconds": time.perf_counter() - t0})
        self.writer.log(
            f"step {step}/{loop.total_steps}: eval loss {self.last['loss']:.4f}, "
            f"accuracy {self.last['accuracy']:.4f}"
        )
        if self.optim_config.get("schedule") != "plateau":
            return None
        host = self.runner.to_host_state(state)
        opt_state = optim.plateau_update(host.opt_state, self.last["accuracy"], self.optim_config)
        return self.runner.from_host_state(host.replace(opt_state=opt_state))


class Checkpoint(Hook):
    """Save through a :class:`vggjax.checkpoint.Checkpointer` after every step (it keeps its own
    interval), forced at the last step and when the loop stops; the steps are NaN-checked first."""

    def __init__(
        self, checkpointer, to_host_state: Callable, metadata: dict[str, Any], timings=None
    ) -> None:
        self.ckpt, self.to_host_state, self.metadata = checkpointer, to_host_state, metadata
        self.timings = timings or metrics_lib.Timings()

    def needs_checked(self, loop: Loop, step: int) -> bool:
        return self.ckpt.should_save(step)

    def after_step(self, loop: Loop, step: int, state: Any) -> None:
        force = step == loop.total_steps or loop.stopping
        with self.timings.time("checkpoint"):  # a no-op between saves (the interval is its own)
            self.ckpt.save(
                step, self.to_host_state(state), {"step": step, **self.metadata}, force=force
            )


class Preempt(Hook):
    """Turns SIGTERM (what Cloud TPU, Kubernetes and Slurm send before taking the machine) and
    Ctrl-C (SIGINT) into a stop.

    The first signal asks the loop to stop after the step in flight (whose checkpoint the
    :class:`Checkpoint` hook then forces). A second SIGTERM gets the previous handler (the
    default terminates at once). A second Ctrl-C gets the previous handler too (Python's raises
    KeyboardInterrupt) unless ``exit_on_second_interrupt``: then it ends the process at once
    with one line and status 130 (:func:`interrupted_at_once`), as the trainer wants — a
    KeyboardInterrupt can land anywhere, even in a garbage-collection callback that cannot pass
    it on. Installed only in the main thread of a single-process job: with several processes,
    JAX's preemption notice (``checkpointer.reached_preemption``) makes all of them stop at the
    same step instead.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer=None, *, exit_on_second_interrupt: bool = False) -> None:
        self.ckpt = checkpointer
        self.exit_on_second_interrupt = exit_on_second_interrupt
        self.requested = False
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT and self.exit_on_second_interrupt:
            interrupted_at_once(getattr(self.ckpt, "directory", None))
        self.requested = True
        self.reason = self.reason or signal.Signals(signum).name
        for sig, previous in self._previous.items():  # a second signal acts at once
            if not (sig == signal.SIGINT and self.exit_on_second_interrupt):
                signal.signal(sig, previous)

    def on_start(self, loop: Loop) -> None:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def wants_stop(self, loop: Loop, step: int) -> bool:
        multi_host = jax.process_count() > 1
        if not (
            self.requested
            or (multi_host and self.ckpt is not None and self.ckpt.reached_preemption(step))
        ):
            return False
        loop.stop_reason = self.reason or "preemption notice"
        return True

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def interrupted_at_once(checkpoint_dir: str | None) -> NoReturn:
    """End the process now (Ctrl-C pressed again, or before training began): one line on stderr
    naming the newest checkpoint in ``checkpoint_dir`` a rerun resumes from, status 130.

    ``os._exit``: no cleanup runs, so nothing can print a traceback on the way out; a checkpoint
    being written is left half-written, which the next run skips (orbax commits a step by
    renaming its finished directory).
    """
    steps = []
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        steps = sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())
    where = (
        f"the newest checkpoint, {checkpoint_dir}/{steps[-1]}, is intact; rerun the same "
        "command to resume from it"
        if steps
        else "no checkpoint was saved yet; rerun the same command to start again"
    )
    sys.stdout.flush()
    print(f"interrupted (Ctrl-C): stopped at once; {where}", file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_EXIT_CODE)


class History(Hook):
    """Every fetched step's scalar metrics, in memory: ``history.series("loss")`` → one float per
    step.

    Pass ``fit(..., log_every=1)`` to see every step. ``keys`` restricts what is kept
    (default: every scalar metric).
    """

    def __init__(self, keys: Sequence[str] | None = None) -> None:
        self.keys = None if keys is None else tuple(keys)
        self.steps: list[int] = []
        self.rows: list[dict[str, float]] = []

    def on_records(self, loop: Loop, records: list[Record], diagnostics: bool) -> None:
        for r in records:
            row = host_scalars(r.metrics)
            self.steps.append(r.step)
            self.rows.append(
                row if self.keys is None else {k: row[k] for k in self.keys if k in row}
            )

    def series(self, key: str) -> np.ndarray:
        """The values of ``key`` at the recorded steps (NaN where a step lacks it)."""
        return np.asarray([row.get(key, np.nan) for row in self.rows], np.float64)


class Every(Hook):
    """Call ``fn(step, state)`` after every ``every``-th step (and, with ``at_start``, once before
    the first step with ``step = start_step``); what it returns is kept in :attr:`results`."""

    def __init__(self, every: int, fn: Callable[[int, Any], Any], *, at_start: Any = None) -> None:
        self.every, self.fn, self.at_start = every, fn, at_start
        self.results: list[tuple[int, Any]] = []

    def on_start(self, loop: Loop) -> None:
        if self.at_start is not None:
            self.results.append((loop.start_step, self.fn(loop.start_step, self.at_start)))

    def after_step(self, loop: Loop, step: int, state: Any) -> None:
        if step % self.every == 0:
            self.results.append((step, self.fn(step, state)))


class Trainability(Hook):
    """Feed every fetched step's loss and gradient norm to a :class:`vggjax.trainability.Watch`.

    Its findings (a plateau at the constant-prediction loss, exactly-zero gradients, an early
    blow-up) are printed once each as ``warning: trainability: ...`` and written to
    ``metrics.jsonl`` as ``finding`` records; the run goes on. At a plateau, ``recheck(state)``
    (when given) runs the trainability check on the network as it is at that step and returns its
    findings — a layer that died, BatchNorm over too few values — which are said the same way;
    when it finds nothing, one line says what it ruled out.
    """

    def __init__(
        self,
        constant_loss: float,
        writer=None,
        *,
        start_step: int = 0,
        recheck: Callable[[Any], list] | None = None,
        workdir: str = "DIR",
        plateau_from: int = 0,
    ) -> None:
        from vggjax import trainability

        self.writer, self.recheck = writer, recheck
        self.pending = False

        def report(items, step=None):
            if recheck is not None and any(f.kind == "plateau" for f in items):
                self.pending = True
            self._warn(items, step)

        table = f"python -m vggjax.diagnose --workdir={workdir} prints the per-layer table"
        advice = f"checking the network at this step; {table}" if recheck else f"{table} and why"
        self.watch = trainability.Watch(
            constant_loss,
            report=report,
            start_step=start_step,
            advice=advice,
            plateau_from=plateau_from,
        )

    def _warn(self, items, step) -> None:
        from vggjax import trainability

        if self.writer is None or self.writer.active:
            trainability.warn(items, self.writer, step or 0)

    def on_records(self, loop: Loop, records: list[Record], diagnostics: bool) -> None:
        for r in records:
            grad = r.metrics.get("grad_norm")
            self.watch.observe(
                r.step, float(r.metrics["loss"]), None if grad is None else float(grad)
            )

    def after_step(self, loop: Loop, step: int, state: Any) -> None:
        if not self.pending or self.recheck is None:
            return
        from vggjax import trainability

        self.pending = False
        found = [dataclasses.replace(f, step=step) for f in self.recheck(state)]
        self._warn(found or [trainability.unexplained(step)], step)
