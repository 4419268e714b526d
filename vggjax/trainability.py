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
  collapse to exactly-zero gradients, and an early blow-up, and says so once, with the step. It
  never stops a run (the NaN guard stays the only stop).

``python -m vggjax.diagnose --config=...`` runs the check alone and prints the per-layer table.
The thresholds and what each reference case measures are in ``docs/trainability.md``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax import diagnostics, losses

EXPERIMENTS = "experiments/README.md"
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
# The watch: the mean loss of a window of steps within this fraction of the constant-prediction
# loss, and its second half no lower than its first (small batches make single losses noisy).
PLATEAU_TOLERANCE, PLATEAU_WINDOW = 0.03, 50


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
        out += [f"finding: {f.line()}" for f in self.findings] or ["no findings"]
        return "\n".join(out)


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


def _signal(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(signal, spread)``: std across the batch axis (per unit, averaged), and that over the mean
    magnitude."""
    x = x.astype(jnp.float32).reshape(x.shape[0], -1)
    signal = jnp.mean(jnp.std(x, axis=0))
    return signal, signal / (jnp.mean(jnp.abs(x)) + 1e-30)


def measure(
    model: nnx.Module, batch: dict[str, jax.Array], loss_name: str, static: dict
) -> dict[str, Any]:
    """The raw numbers of the check as arrays (jit-able; pass a model in training mode). What is
    known at trace time — the feats order, kernel shapes, the number of logits — goes into
    ``static``."""

    def loss_fn(m):
        logits, feats = m(batch["image"], return_features=True)
        loss = losses.get_loss(loss_name)(logits, batch["label"], mask=batch.get("mask"))
        return loss, (logits, collections.OrderedDict(feats))

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (loss, (logits, feats)), grads = grad_fn(model)
    params = nnx.state(model, nnx.Param)
    kernels = {
        "/".join(map(str, p)): (v, g) for (p, v), (_, g) in zip(_kernels(params), _kernels(grads))
    }
    static.update(
        feat_order=list(feats),
        logit_values=logits.size,
        logit_rank=logits.ndim,
        batch=logits.shape[0],
        shapes={k: v.shape for k, (v, _) in kernels.items()},
    )
    return {
        "loss": loss,
        "stats": _layer_stats(grads, feats),
        "signal": {k: _signal(v) for k, v in feats.items() if hasattr(v, "ndim") and v.ndim >= 2},
        "kernels": {
            k: (jnp.std(v), jnp.all(v == 0), jnp.all(g == 0)) for k, (v, g) in kernels.items()
        },
        "logits": (*_signal(logits), jnp.min(logits)),
    }


def _layer_stats(grads: Any, feats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The few statistics the check needs, named as :func:`vggjax.diagnostics.layer_stats` names
    them (``act_std/``, ``dead_frac/``, ``grad_norm/``, ``global_grad_norm``); a lean set keeps the
    check's compile short."""
    out: dict[str, jax.Array] = {}
    for name, x in feats.items():
        if not (hasattr(x, "ndim") and x.ndim >= 2):
            continue
        x = x.astype(jnp.float32)
        out[f"act_std/{name}"] = jnp.std(x)
        if diagnostics.default_is_relu(name):
            peak = jnp.max(jnp.abs(x), axis=tuple(range(x.ndim - 1)))
            out[f"dead_frac/{name}"] = jnp.mean((peak == 0).astype(jnp.float32))
    squares: dict[str, list[jax.Array]] = collections.defaultdict(list)
    for path, g in diagnostics._flatten(grads):
        g = g.astype(jnp.float32).ravel()
        squares[diagnostics._split(path)[0]].append(jnp.vdot(g, g))
    for layer, sq in squares.items():
        out[f"grad_norm/{layer}"] = jnp.sqrt(sum(sq))
    out["global_grad_norm"] = jnp.sqrt(sum(sum(sq) for sq in squares.values()))
    return out


def _kernels(state: Any) -> list[tuple[tuple[str, ...], jax.Array]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys[-1] == "value":
            keys = keys[:-1]
        if keys[-1] == "kernel":
            out.append((tuple(keys[:-1]), leaf))
    return out


def _layers(raw: dict[str, Any], static: dict) -> list[Layer]:
    """Host numbers per feats entry, joined with the kernel that writes it."""
    stats, signal = raw["stats"], raw["signal"]
    owners = {}
    for path, (std, zero_w, zero_g) in raw["kernels"].items():
        feat = diagnostics._feat_for(path.split("/"), static["feat_order"])
        if feat is not None and feat not in owners:
            fan_in = int(np.prod(static["shapes"][path][:-1]))
            owners[feat] = (path, float(std) * math.sqrt(fan_in), bool(zero_w), bool(zero_g))
    rows = []
    for name in static["feat_order"]:
        if name not in signal:
            continue
        param = owners.get(name)
        dead = stats.get(f"dead_frac/{name}")
        grad = stats.get(f"grad_norm/{param[0]}") if param else None
        rows.append(
            Layer(
                name,
                float(stats[f"act_std/{name}"]),
                float(signal[name][0]),
                float(signal[name][1]),
                None if dead is None else float(dead),
                param[0] if param else None,
                None if grad is None else float(grad),
                param[1] if param else None,
                param[2] if param else False,
                param[3] if param else False,
            )
        )
    return rows


def check(model: nnx.Module, batch: dict[str, Any], loss_name: str, num_classes: int) -> Report:
    """Measure ``model`` (any vggjax-convention network, left unchanged) on one ``batch`` and find
    problems.

    ``batch`` holds NHWC ``image``, ``label`` and optionally ``mask``, as the train step takes.
    The model runs on a copy in training mode — BatchNorm on batch statistics, as the first step
    sees it — but with dropout off, whose random masks would pass for input dependence; one
    forward and one backward pass, compiled once.
    """
    graphdef, state = nnx.split(model)
    static: dict[str, Any] = {}

    def run(state, batch):
        m = nnx.merge(graphdef, state, copy=True)
        m.train()
        m.set_attributes(nnx.Dropout, deterministic=True, raise_if_not_found=False)
        return measure(m, batch, loss_name, static)

    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    # Run once: on XLA:CPU the backend's optimisations cost more compile time than they save
    # (about half of the check's compile for the quickstart model); other backends as usual.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    compiled = jax.jit(run).lower(state, batch).compile(options)
    raw = jax.device_get(compiled(state, batch))
    layers = _layers(raw, static)
    signal, spread, logits_min = (float(v) for v in raw["logits"])
    report = Report(
        layers,
        float(raw["loss"]),
        constant_loss(loss_name, num_classes, batch["label"]),
        signal,
        spread,
        float(logits_min),
        int(static["logit_values"]),
        float(raw["stats"]["global_grad_norm"]),
        [],
        static["logit_rank"] == 2,
        int(static["batch"]),
    )
    report.findings = findings(report)
    return report


def findings(report: Report) -> list[Finding]:
    """The :class:`Finding`\\ s a report's numbers support, most fundamental first."""
    out = _zero(report) or _exploding(report)
    if not out and report.batch >= 2:  # a spread across one image means nothing
        out += _lost_signal(report)
    if report.classifier:
        out += _relu_scores(report)
    return out


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


def warn(items: Sequence[Finding], writer: Any = None, step: int | None = 0, out=None) -> None:
    """Print each finding as ``warning: trainability: ...`` and record it in ``metrics.jsonl``
    (``writer``)."""
    for f in items:
        print(f"warning: trainability: {f.line()}", file=out or sys.stderr)
        if writer is not None:
            writer.write(f.step if f.step is not None else (step or 0), "finding", f.record())


class Watch:
    """The while-training half (fed by the :class:`vggjax.training.hooks.Trainability` hook): a
    plateau at the constant-prediction loss, exactly-zero gradients, an early blow-up; each said
    once, with its step."""

    def __init__(
        self,
        constant: float,
        *,
        window: int = PLATEAU_WINDOW,
        report: Callable | None = None,
        start_step: int = 0,
    ) -> None:
        self.constant, self.window = constant, window
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
        if len(self.losses) == self.window and self._flat():
            self._say(
                Finding(
                    "plateau",
                    None,
                    f"loss stuck at {np.mean(self.losses):.4f}, the constant-prediction "
                    f"loss {self.constant:.4f}, over the last {self.window} steps",
                    "the network predicts the class prior whatever the image",
                    "run python -m vggjax.diagnose with this config to see why",
                    EXPERIMENTS,
                    step,
                )
            )
