"""The training loop, reusable: :func:`fit` runs steps and hands what happens to hooks.

``fit`` owns only what every run needs: feed batches to a jitted step, fetch its metrics to
the host every ``log_every`` steps (not every step: the device runs ahead), apply the NaN
policy to every fetched step, and stop when a hook asks. Everything else is a
:class:`Hook` — metrics files, evaluation, checkpoints, preemption (:mod:`vggjax.training.hooks`),
or your own: record what an experiment needs, probe the state every N steps.

    from vggjax.training import fit, hooks, make_train_step, state_from_model

    graphdef, _, state = state_from_model(model, tx)
    history = hooks.History()
    result = fit(state, jax.jit(make_train_step(graphdef, tx, "softmax_cross_entropy")),
                 batches, total_steps=500, hooks=[history])
    history.series("loss")                      # one float per step

NaN policy (``nan_policy``): ``"stop"`` raises :class:`~vggjax.errors.VggjaxError` at the first
fetched step whose ``finite`` metric is 0, naming the step and the first bad parameter;
``"skip"`` warns (the step itself kept the old state: ``make_train_step(skip_nonfinite=True)``)
and goes on; ``None`` checks nothing (experiments that study divergence).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from vggjax.errors import VggjaxError
from vggjax.training.step import describe_nonfinite

StepFn = Callable[[Any, Any], tuple[Any, Any]]


@dataclasses.dataclass
class Record:
    """One step's metrics on the host (numpy scalars/arrays), after the NaN check."""

    step: int
    metrics: dict[str, Any]


class Hook:
    """Extension point of :func:`fit`; override what you need (every method is optional).

    Order per step: the step runs; ``wants_stop``; at a fetch, ``on_records`` with the
    fetched steps; then ``after_step`` (may return a new state: evaluation with a plateau
    schedule does); ``fit`` stops after a step at which some hook wanted to.
    """

    def on_start(self, loop: "Loop") -> None: ...

    def wants_stop(self, loop: "Loop", step: int) -> bool:
        return False

    def needs_checked(self, loop: "Loop", step: int) -> bool:
        """True when the steps so far must pass the NaN check now (a checkpoint is about to be
        written)."""
        return False

    def on_records(self, loop: "Loop", records: list[Record], diagnostics: bool) -> None: ...

    def after_step(self, loop: "Loop", step: int, state: Any) -> Any | None: ...

    def on_end(self, loop: "Loop", state: Any) -> None: ...

    def close(self) -> None:
        """Always called, also when the loop raised (release signal handlers, files)."""


@dataclasses.dataclass
class Loop:
    """What hooks see: the schedule, the current step, and whether the run is stopping."""

    total_steps: int
    start_step: int
    step: int = 0
    stopping: bool = False
    stop_reason: str = ""
    skipped: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FitResult:
    """The final state, the last step run, and why the loop ended early (``""``: it did not)."""

    state: Any
    step: int
    stopped: str
    skipped: list[int]


class _NonfiniteCheck:
    """Fetch pending step metrics to the host once each and apply the NaN policy."""

    def __init__(
        self, policy: str | None, fetch: Callable, names: Callable[[], list[str]] | None, loop: Loop
    ):
        self.policy, self.fetch, self.names, self.loop = policy, fetch, names, loop
        self.cache: dict[int, Any] = {}

    def __call__(self, pending: list[tuple[int, Any]]) -> list[Record]:
        out = []
        for step, m in pending:
            if step not in self.cache:
                self.cache[step] = host = self.fetch(m)
                self._check(step, host)
            out.append(Record(step, self.cache[step]))
        return out

    def _check(self, step: int, host: Any) -> None:
        if self.policy is None or float(host.get("finite", 1.0)) != 0.0:
            return
        what = describe_nonfinite(step, host, self.names() if self.names else [])
        if self.policy == "stop":
            raise VggjaxError(
                f"non-finite loss, gradient or weights at {what}; lower optim.learning_rate, "
                "enable optim.grad_clip_norm, or set nan_policy=skip"
            )
        self.loop.skipped.append(step)
        n = len(self.loop.skipped)
        if n <= 3:
            more = (
                "; later skipped steps are only counted (finite=0 in metrics.jsonl)"
                if n == 3
                else ""
            )
            print(
                f"warning: skipped {what}: the step's update was discarded{more}", file=sys.stderr
            )


def fit(
    state: Any,
    train_step: StepFn,
    batches: Iterator[Any],
    *,
    total_steps: int,
    start_step: int = 0,
    log_every: int = 1,
    hooks: Sequence[Hook] = (),
    nan_policy: str | None = "stop",
    fetch: Callable[[Any], Any] = jax.device_get,
    diagnostics_step: StepFn | None = None,
    diagnostics_every: int = 0,
    parameter_names: Callable[[], list[str]] | None = None,
) -> FitResult:
    """Run ``train_step`` from ``start_step + 1`` to ``total_steps`` on ``batches`` (see the module
    docstring).

    Args:
      state: the train state (e.g. :class:`~vggjax.training.state.TrainState`), already placed.
      train_step: ``(state, batch) -> (state, metrics)``, jitted by the caller.
      batches: an iterator of batches in the form ``train_step`` takes.
      log_every: fetch metrics (and call ``on_records``) every this many steps, and at the last.
      diagnostics_step / diagnostics_every: use this step (with per-layer statistics) every
        ``diagnostics_every`` steps instead, and fetch then.
      fetch: device metrics → host (the pmap runner takes device 0's copy).
      parameter_names: parameter names in forward order, for the NaN message (called once, lazily).
    Returns a :class:`FitResult`; raises VggjaxError for a non-finite step under ``"stop"``.
    """
    loop = Loop(total_steps=total_steps, start_step=start_step)
    check = _NonfiniteCheck(nan_policy, fetch, parameter_names, loop)
    pending: list[tuple[int, Any]] = []
    try:
        for h in hooks:
            h.on_start(loop)
        for step in range(start_step + 1, total_steps + 1):
            loop.step = step
            diag = (
                diagnostics_step is not None
                and diagnostics_every > 0
                and step % diagnostics_every == 0
            )
            state, metrics = (diagnostics_step if diag else train_step)(state, next(batches))
            pending.append((step, metrics))
            loop.stopping = loop.stopping or any(h.wants_stop(loop, step) for h in hooks)
            if step % log_every == 0 or step == total_steps or diag:
                records, pending, check.cache = check(pending), [], {}
                for h in hooks:
                    h.on_records(loop, records, diag)
            elif loop.stopping or any(h.needs_checked(loop, step) for h in hooks):
                check(pending)  # before a checkpoint; the records wait for the next fetch
            for h in hooks:
                new = h.after_step(loop, step, state)
                state = state if new is None else new
            if loop.stopping:
                break
        for h in hooks:
            h.on_end(loop, state)
    finally:
        for h in hooks:
            h.close()
    return FitResult(
        state, loop.step or start_step, loop.stop_reason if loop.stopping else "", loop.skipped
    )


def host_scalars(metrics: dict[str, Any], skip_prefixes: Sequence[str] = ()) -> dict[str, float]:
    """The scalar metrics of a fetched step as floats, leaving out keys with the given prefixes."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if not k.startswith(tuple(skip_prefixes)) and np.ndim(v) == 0
    }
