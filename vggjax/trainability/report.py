"""What the trainability check returns: findings, per-layer numbers, the report and its table."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

EXPERIMENTS = "experiments/README.md"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One sign that the network will not (or does not) train."""

    # vanishing_signal, exploding_signal, zero_init, no_gradient, relu_scores,
    # input_independent, ...
    kind: str
    layer: str | None
    figure: str  # what was measured
    cause: str
    fix: str
    see: str  # the experiment that shows it
    step: int | None = None

    def line(self) -> str:
        where = f"step {self.step}: " if self.step is not None else ""
        layer = f" [{self.layer}]" if self.layer else ""
        return f"{where}{self.figure}{layer}: {self.cause}; {self.fix} (see {self.see})"

    def record(self) -> dict[str, Any]:
        return {"finding": self.kind, "layer": self.layer or "", "message": self.line()}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run trains with, for findings that name it."""

    learning_rate: float  # the schedule's peak
    batch_size: int  # global


@dataclasses.dataclass
class Layer:
    """The check's numbers for one recorded layer output (``feats`` entry), in network order."""

    name: str
    act_std: float
    # std across the batch (per unit, averaged): the part of the output that depends on the input
    signal: float
    spread: float  # signal / mean |x|
    dead: float | None = None  # ReLU outputs: fraction of channels 0 for every example and position
    param: str | None = None  # the parameter layer that writes it (e.g. features/conv1_1)
    grad_norm: float | None = None
    gain: float | None = None  # std(kernel) · sqrt(fan_in)
    zero_weights: bool = False
    zero_grad: bool = False
    # BatchNorm outputs: the values each channel is normalised over (batch x height x width)
    values: int | None = None


@dataclasses.dataclass
class Report:
    """What :func:`check` measured, and its :func:`findings`."""

    layers: list[Layer]
    loss: float
    constant_loss: float
    logits_signal: float
    logits_spread: float
    logits_min: float
    logit_values: int
    grad_norm: float
    findings: list[Finding]
    classifier: bool = True  # (N, C) logits; False for per-pixel score maps
    batch: int = 0
    # True when the check looked at a network during training (the watch's recheck, diagnose
    # --workdir) rather than at initialisation
    trained: bool = False

    def table(self) -> str:
        """The per-layer table (activation std, input dependence, gain, gradient norm, dead %) and
        the findings."""
        fmt = "{:<16} {:>10} {:>10} {:>7} {:>10} {:>7}"
        out = [fmt.format("layer", "act std", "signal", "gain", "grad norm", "dead %")]
        for r in self.layers:
            out.append(
                fmt.format(
                    r.name[:16],
                    f"{r.act_std:.3g}",
                    f"{r.signal:.3g}",
                    _fmt(r.gain, ".3g"),
                    _fmt(r.grad_norm, ".3g"),
                    _fmt(None if r.dead is None else 100 * r.dead, ".0f"),
                )
            )
        out.append(
            f"loss {self.loss:.4f} (constant prediction {self.constant_loss:.4f}), "
            f"logits' signal (std across the batch) {self.logits_signal:.3g}, "
            f"gradient norm {self.grad_norm:.3g}"
        )
        out += [f"finding: {f.line()}" for f in self.findings] or [self.ruled_out()]
        return "\n".join(out)

    def ruled_out(self) -> str:
        """What a check without findings has ruled out, and what it cannot see."""
        line = (
            "no findings: no zero or dead layer, no signal that vanishes or explodes, the logits "
            "depend on the image, BatchNorm normalises over enough values"
        )
        if self.trained:
            return line
        return (
            f"{line}; what a check at initialisation cannot see is a learning rate too large "
            "for the batch size: the trainer checks the network again if its loss stays at "
            "the constant-prediction value, and python -m vggjax.diagnose --workdir=RUN checks "
            "a run's checkpoint"
        )


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def constant_loss(loss_name: str, num_classes: int, labels: Any = None) -> float:
    """The loss of the best input-independent prediction: ln C for softmax; for multi-label, the
    mean binary entropy of each class's frequency in ``labels`` (the label prior the net can always
    reach)."""
    if loss_name != "multilabel_soft_margin" or labels is None:
        return math.log(num_classes)
    p = np.clip(
        np.asarray(labels, np.float64).reshape(-1, num_classes).mean(axis=0), 1e-12, 1 - 1e-12
    )
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
