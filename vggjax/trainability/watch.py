"""The while-training half of the trainability check: plateau, collapse and blow-up, said once."""

from __future__ import annotations

import collections
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np

from vggjax.trainability.report import EXPERIMENTS, Finding

# The watch: the mean loss of a window of steps within this fraction of the constant-prediction
# loss, and its second half no lower than its first (small batches make single losses noisy).
PLATEAU_TOLERANCE, PLATEAU_WINDOW = 0.03, 50


def warn(items: Sequence[Finding], writer: Any = None, step: int | None = 0, out=None) -> None:
    """Print each finding as ``warning: trainability: ...`` and record it in ``metrics.jsonl``
    (``writer``)."""
    for f in items:
        print(f"warning: trainability: {f.line()}", file=out or sys.stderr)
        if writer is not None:
            writer.write(f.step if f.step is not None else (step or 0), "finding", f.record())


class Watch:
    """The while-training half (fed by the :class:`vggjax.training.hooks.Trainability` hook): a
    plateau at the constant-prediction loss (after ``plateau_from``, the warm-up's end),
    exactly-zero gradients, an early blow-up; each said once, with its step."""

    def __init__(
        self,
        constant: float,
        *,
        window: int = PLATEAU_WINDOW,
        report: Callable | None = None,
        start_step: int = 0,
        advice: str = "run python -m vggjax.diagnose --workdir=DIR (the run's) to see why",
        plateau_from: int = 0,
    ) -> None:
        self.constant, self.window, self.advice = constant, window, advice
        # A loss still near ln C while the warm-up is raising the learning rate is no verdict:
        # the plateau is judged from the end of the warm-up on.
        self.plateau_from = plateau_from
        self.report = report or (lambda items, step: warn(items, None, step))
        self.losses: collections.deque = collections.deque(maxlen=window)
        self.said: set[str] = set()
        self.first_loss: float | None = None
        self.start_step = start_step
        self.found: list[Finding] = []

    def _say(self, f: Finding) -> None:
        if f.kind not in self.said:
            self.said.add(f.kind)
            self.found.append(f)
            self.report([f], f.step)

    def _flat(self) -> bool:
        losses = np.asarray(self.losses)
        half = len(losses) // 2
        near = abs(losses.mean() - self.constant) <= PLATEAU_TOLERANCE * self.constant
        return bool(near and losses[half:].mean() >= losses[:half].mean() - 0.01 * self.constant)

    def observe(self, step: int, loss: float, grad_norm: float | None) -> None:
        """Feed one step's loss and gradient norm (host floats)."""
        if not math.isfinite(loss):
            return  # the NaN guard's business
        self.first_loss = loss if self.first_loss is None else self.first_loss
        if grad_norm is not None and grad_norm == 0.0 and step > 1:
            self._say(
                Finding(
                    "collapse",
                    None,
                    "every gradient is exactly 0",
                    "the outputs no longer depend on the weights "
                    "(dead ReLUs, or a collapse to constant outputs)",
                    "check the head's activation and the learning rate",
                    f"{EXPERIMENTS}#gap_dead_relu",
                    step,
                )
            )
        if step - self.start_step <= 10 and loss > 10 * max(self.first_loss, self.constant):
            self._say(
                Finding(
                    "blow_up",
                    None,
                    f"loss {loss:.4g} from {self.first_loss:.4g} at the first step",
                    "the first updates diverge",
                    "lower optim.learning_rate, or use a _bn model or init=he_normal",
                    f"{EXPERIMENTS}#depth_init",
                    step,
                )
            )
        self.losses.append(loss)
        if step > self.plateau_from and len(self.losses) == self.window and self._flat():
            self._say(
                Finding(
                    "plateau",
                    None,
                    f"loss stuck at {np.mean(self.losses):.4f}, the constant-prediction "
                    f"loss {self.constant:.4f}, over the last {self.window} steps",
                    "the network predicts the class prior whatever the image",
                    self.advice,
                    EXPERIMENTS,
                    step,
                )
            )
