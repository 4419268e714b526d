"""The trainability check's thresholds and the findings a report's numbers support."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vggjax.trainability.report import EXPERIMENTS, Finding, Layer, Report, Setup

# The signal is the input-dependent part of a layer's output: its std across the batch (per unit,
# averaged). Logits whose signal is below LOST carry no image, and when the first weight layer's
# gradient norm is also below STARVED times the largest layer's, nothing upstream can learn either
# (Xavier's VGG-16 has a small logit signal too, but gradients within 20x: it trains):
# "vanishing" when most weight layers lose the signal, "input independent" when a few do.
LOST, STARVED = 1e-3, 1e-2
EXPLODING_TOTAL, EXPLODING_PER_LAYER = 1e3, 1.1
# A loss at initialisation this many times the constant-prediction loss, with kernels of a gain this
# far above He's sqrt(2): logits already saturated by an init that amplifies the signal.
SATURATED_LOSS, EXPLODING_GAIN = 3.0, 1.7
# BatchNorm normalises each channel over batch x height x width values; over fewer than this its
# output keeps too little of the image (experiments/README.md#batch_lr: VGG-11-BN at 4 values per
# channel learns half as well as VGG-11 without BN; at 8 as well).
BN_MIN_VALUES = 8
# A trained network whose logits lost the image, with a ReLU layer at least this dead: that layer
# is named (in the batch-size runs of experiments/README.md#batch_lr, 94-98% where not 100%).
MOSTLY_DEAD = 0.9


def findings(
    report: Report, before: Report | None = None, setup: Setup | None = None
) -> list[Finding]:
    """The :class:`Finding`\\ s a report's numbers support, most fundamental first.

    ``before``: the same network's report at initialisation, on the same batch, when ``report`` is
    of a network being trained; ``setup``: the run's learning rate and batch size, for the fixes.
    """
    zero = _zero(report)  # zero weights make every ReLU "dead" too: the root cause is named
    out = zero or (_exploding(report) if not report.trained else [])
    out += _bn_few_values(report, setup)
    if not zero:
        out += _dead_layer(report, before, setup)
    if not out and report.batch >= 2:  # a spread across one image means nothing
        out += _lost_signal(report)
    if report.classifier:
        out += _relu_scores(report)
    return out


def _bn_few_values(report: Report, setup: Setup | None) -> list[Finding]:
    few = [r for r in report.layers if r.values is not None and r.values < BN_MIN_VALUES]
    if not few:
        return []
    row = min(few, key=lambda r: r.values)
    positions = max(1, row.values // max(report.batch, 1))
    need = -(-BN_MIN_VALUES // positions)
    batch = setup.batch_size if setup else report.batch
    return [
        Finding(
            "bn_few_values",
            row.name,
            f"{row.name} normalises each channel over {row.values} values "
            f"(batch {report.batch} x {positions} positions)",
            f"BatchNorm over fewer than {BN_MIN_VALUES} values per channel keeps little of the "
            "image in its output, and its running statistics are too noisy to evaluate with",
            f"raise batch_size from {batch} to at least {need}, or use the model without BN "
            "(e.g. vgg11 for vgg11_bn)",
            f"{EXPERIMENTS}#batch_lr",
        )
    ]


def _dead_layer(report: Report, before: Report | None, setup: Setup | None) -> list[Finding]:
    """A ReLU output that is 0 for every image, position and channel: the layers above see a
    constant, so the logits cannot depend on the image. In a trained network whose logits no
    longer depend on the image, also a ReLU layer that is mostly so."""
    relus = [r for r in report.layers if r.dead is not None]
    dead = [r for r in relus if r.dead >= 1.0]
    # (a spread across one image means nothing: batch >= 2, as for the lost signal)
    if not dead and report.trained and report.batch >= 2 and report.logits_signal < LOST and relus:
        most = max(relus, key=lambda r: r.dead)
        dead = [most] if most.dead >= MOSTLY_DEAD else []
    if not dead:
        return []
    row = dead[0]
    if not report.trained:
        return [
            Finding(
                "dead_layer",
                row.name,
                f"every unit of {row.name} is 0 for every image of the batch at initialisation",
                "the layers above it see a constant, so the output cannot depend on the image",
                "use init=he_normal with zero biases, or a _bn model",
                f"{EXPERIMENTS}#gap_dead_relu",
            )
        ]
    at_init = {r.name: r.dead for r in before.layers} if before else {}
    since = at_init.get(row.name)
    was = f" ({since:.0%} at step 0)" if since is not None else ""
    units = "every unit of" if row.dead >= 1.0 else f"{row.dead:.0%} of the units of"
    verb = "is" if row.dead >= 1.0 else "are"
    signal = (
        f", and the logits' signal is {report.logits_signal:.2g}"
        if report.logits_signal < LOST
        else ""
    )
    rate = (
        f"optim.learning_rate (peak {setup.learning_rate:g} at batch {setup.batch_size})"
        if setup
        else "optim.learning_rate"
    )
    return [
        Finding(
            "dead_layer",
            row.name,
            f"{units} {row.name} {verb} now 0 for every image of the batch{was}{signal}",
            "the updates drove the units below zero, so the layers above see a constant and "
            "the loss stays at the constant-prediction value; a learning rate too large for the "
            "batch size does this (the trainer does not rescale it with the batch)",
            f"lower {rate} about 10x, or raise batch_size",
            f"{EXPERIMENTS}#batch_lr",
        )
    ]


def _zero(report: Report) -> list[Finding]:
    see = f"{EXPERIMENTS}#init_study"
    zero = [r for r in report.layers if r.zero_weights and r.zero_grad]
    if zero:
        names = ", ".join(r.param for r in zero)
        return [
            Finding(
                "zero_init",
                zero[0].param,
                f"weights and gradients exactly 0 in {names}",
                "a zero-initialised layer passes no signal forward and gets no gradient back, "
                "so it never moves",
                "use a random init (e.g. init=he_normal)",
                see,
            )
        ]
    if report.grad_norm == 0.0:
        return [
            Finding(
                "no_gradient",
                None,
                "every gradient is exactly 0 at initialisation",
                "no path from the loss to any weight carries a signal",
                "check the init and the head",
                see,
            )
        ]
    return []


def _weighted(report: Report) -> list[Layer]:
    """The outputs of the weight layers (convs, linears), in network order."""
    return [r for r in report.layers if r.param is not None]


def _gain(rows: Sequence[Layer]) -> float:
    gains = [r.gain for r in rows if r.gain]
    return float(np.median(gains)) if gains else 0.0


def _exploding(report: Report) -> list[Finding]:
    weighted = _weighted(report)
    if len(weighted) < 3 or weighted[0].signal <= 0:
        return []
    first, last = weighted[0], weighted[-1]
    total = last.signal / first.signal
    per = total ** (1.0 / (len(weighted) - 1))
    gain = _gain(weighted)
    saturated = report.loss > SATURATED_LOSS * report.constant_loss and gain > EXPLODING_GAIN
    if not (saturated or (total >= EXPLODING_TOTAL and per > EXPLODING_PER_LAYER)):
        return []
    return [
        Finding(
            "exploding_signal",
            last.name,
            f"loss {report.loss:.3g} at initialisation "
            f"({report.loss / report.constant_loss:.0f}x the "
            f"constant-prediction {report.constant_loss:.3g}); "
            f"signal {first.signal:.2g} at {first.name}, "
            f"{last.signal:.2g} at {last.name}; kernel gain std·√fan_in {gain:.2g} (He: 1.41)",
            "the init amplifies the signal and saturates the logits: the first updates diverge",
            "use init=he_normal (or xavier), a _bn model, or a lower learning rate",
            f"{EXPERIMENTS}#depth_init",
        )
    ]


def _lost_signal(report: Report) -> list[Finding]:
    """The logits carry (almost) nothing of the image: lost at every layer (vanishing) or in a
    few."""
    weighted = _weighted(report)
    if report.logits_signal >= LOST or len(weighted) < 2 or weighted[0].signal <= 0:
        return []
    first = weighted[0]
    grads = [r.grad_norm for r in weighted if r.grad_norm is not None]
    starved = (first.grad_norm or 0.0) / max(max(grads, default=0.0), 1e-30)
    if starved >= STARVED:
        return []
    head = (
        f"the logits' signal (std across the batch) is {report.logits_signal:.2g}, against "
        f"{first.signal:.2g} at {first.name}, and {first.name}'s gradient is {starved:.1g} of the "
        "largest layer's"
    )
    # What each weight layer keeps of its input's signal; "lossy" ones keep less than half.
    kept = [
        (row.signal / prev.signal, row)
        for prev, row in zip(report.layers, report.layers[1:])
        if row.param is not None and prev.signal > 0
    ]
    lossy = [(k, row) for k, row in kept if k < 0.5]
    if lossy and len(lossy) <= len(kept) / 2:
        names = ", ".join(row.name for _, row in lossy)
        gains = [row.gain for _, row in lossy if row.gain]
        gain = f" (kernel gain std·√fan_in {min(gains):.2g}-{max(gains):.2g})" if gains else ""
        return [
            Finding(
                "input_independent",
                lossy[0][1].name,
                f"{head}; it is lost in {names}, which keep {min(k for k, _ in lossy):.2g}-"
                f"{max(k for k, _ in lossy):.2g} of their input's{gain}",
                "small-gain layers with a constant bias make every unit about the same for every "
                "image: expect a long plateau at the constant-prediction loss",
                "use init=he_normal or BatchNorm",
                f"{EXPERIMENTS}#overfeat_1x1",
            )
        ]
    per = (weighted[-1].signal / first.signal) ** (1.0 / (len(weighted) - 1))
    return [
        Finding(
            "vanishing_signal",
            weighted[-1].name,
            f"{head}: it falls {1 / per:.1f}x per layer "
            f"(kernel gain std·√fan_in {_gain(weighted):.2g}, He: 1.41)",
            "the init shrinks the signal layer after layer: the output and the gradients of the "
            "first layers are tiny and the loss sits at the constant-prediction value",
            "use init=he_normal or a _bn model",
            f"{EXPERIMENTS}#depth_init",
        )
    ]


def _relu_scores(report: Report) -> list[Finding]:
    if report.logits_min < 0 or report.logit_values < 32:
        return []
    return [
        Finding(
            "relu_scores",
            None,
            f"the logits are never negative (minimum {report.logits_min:.3g} over "
            f"{report.logit_values} values)",
            "a ReLU on the class scores (GAP head score_act='relu') can die outright: "
            "every output and every gradient exactly 0",
            "use linear scores (head_options.score_act=None) or BatchNorm",
            f"{EXPERIMENTS}#gap_dead_relu",
        )
    ]


def unexplained(step: int | None = None) -> Finding:
    """What a plateau's recheck says when the network at that step shows none of the signs."""
    return Finding(
        "plateau_unexplained",
        None,
        "the network at this step has no dead layer, no exactly-zero weights or gradients, "
        f"BatchNorm over at least {BN_MIN_VALUES} values per channel, and its logits depend on "
        "the image",
        "what is left is the optimisation: a learning rate too high or too low for the batch "
        "size, or labels that do not follow the images",
        "try optim.learning_rate 10x lower and 10x higher for a few hundred steps",
        f"{EXPERIMENTS}#batch_lr",
        step,
    )
