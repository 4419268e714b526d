"""Will this network train? A check over one batch at initialisation, and a watch while training.

The experiments in ``experiments/`` show, with numbers, the ways the reference networks fail to
train. This module looks for the same signs in any model, so the trainer can say so instead of
running thousands of steps at the constant-prediction loss:

* :func:`check` — one forward + backward pass on one batch, before the first step: the
  per-layer activation std and how it changes from layer to layer, gradient norms, the gain
  ``std(W)·√fan_in`` of every kernel, dead-unit fractions, how much the activations and the
  logits depend on the input (their spread across the batch), and exactly-zero weights and
  gradients. :func:`findings` turns the numbers into :class:`Finding`\\ s: the layer, the
  measured figure, the likely cause, the fix, and the experiment that shows it.
* :class:`Watch` — a :class:`vggjax.training.Hook` that, while training, notices a loss stuck at
  its constant-prediction value (ln C for softmax, the label-prior loss for multi-label), a
  collapse to exactly-zero gradients, and an early blow-up, and says so once, with the step; at a
  plateau the trainer checks the network as it is then (a layer that died, BatchNorm over too
  few values) and says what it found or ruled out. It never stops a run (the NaN guard stays the
  only stop).

``python -m vggjax.diagnose --config=...`` runs the check alone and prints the per-layer table.
The thresholds and what each reference case measures are in ``docs/trainability.md``.

Where it lives: :mod:`.report` (what a check returns: :class:`Finding`, :class:`Layer`,
:class:`Report`), :mod:`.probe` (the one-batch forward + backward), :mod:`.rules` (the
thresholds and the findings they support), :mod:`.watch` (the while-training half).
"""

from vggjax.trainability.probe import check, input_signal, measure
from vggjax.trainability.report import (
    EXPERIMENTS,
    Finding,
    Layer,
    Report,
    Setup,
    constant_loss,
)
from vggjax.trainability.rules import findings, unexplained
from vggjax.trainability.watch import Watch, warn

__all__ = [
    "EXPERIMENTS",
    "Finding",
    "Layer",
    "Report",
    "Setup",
    "Watch",
    "check",
    "constant_loss",
    "findings",
    "input_signal",
    "measure",
    "unexplained",
    "warn",
]
