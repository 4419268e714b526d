"""Dead ReLU on the class scores of a GAP head (reference case 000, "WSDR").

The network of the seed: VGG-16 conv1–conv5 (no pool5), ConvReLU(512→1024, 3×3),
ConvReLU(1024→classes, 3×3) — a ReLU on the class scores — global average pooling, the
multi-label soft-margin loss and SGD, PyTorch's default initialisation. Measured here:

* the outputs and every gradient become exactly 0 after a few updates (how many, as a
  function of the learning rate, over several seeds), the fraction of dead score units
  reaches 100 %, and the loss sticks at ln 2 = 0.693147 per label, for good;
* the fixes, trained on the same batches: no ReLU on the scores, an FC layer after the
  pooling (the poster's fix), BatchNorm (WSDR's ``bn=True``: BN before every ReLU, the
  score ReLU included), and BatchNorm with linear scores.

Everything is library code (:func:`vggjax.models.reference.wsdr`,
:func:`vggjax.training.make_train_step` with per-layer diagnostics,
:func:`vggjax.optim.make_optimizer`, the loop :func:`vggjax.experiment.train`); this script
only runs and records. Data: VOC 2007 is not available offline, so the embedded
multi-label ``vggjax_digits_multilabel`` stands in (1–4 real handwritten digits tiled 2×2,
10-way multi-hot labels, so 10 classes instead of VOC's 20). Default size: width 1/8, 32×32
inputs (a 2×2 conv5 map instead of 14×14); ``--full`` uses the original width and 224×224
(the 14×14 map of the seed) — hours on a CPU, minutes on an accelerator.

    python experiments/gap_dead_relu.py            # ~5-8 min on 2 CPU cores
    python experiments/gap_dead_relu.py --quick    # ~30 s: the test suite's check
    python experiments/gap_dead_relu.py --full     # original width and 224x224 input
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vggjax import experiment, losses, optim
from vggjax.models.reference import wsdr
from vggjax.training import make_train_step, merge, state_from_model

from figures.gap_dead_relu import make_plots

DATASET = "vggjax_digits_multilabel"
LN2 = math.log(2.0)

# name -> wsdr() options. "relu_scores" is the seed's network.
VARIANTS: dict[str, dict] = {
    "relu_scores": {},
    "linear_scores": {"score_relu": False},
    "fc_after_gap": {"fc": True},
    "batchnorm": {"batch_norm": True},
    "batchnorm_linear_scores": {"batch_norm": True, "score_relu": False},
}
# Layers whose gradient norm is followed step by step (those that exist in a variant).
TRACKED_GRADS = (
    *("features/conv1_1", "features/conv3_1", "features/conv5_3"),
    *("head/conv1", "head/score", "head/fc"),
)
TRACKED_STATS = (
    *("dead_frac/score_relu", "zero_frac/score_relu", "zero_frac/gap", "act_mean/score"),
    *("act_std/score", "dead_frac/head_relu1", "dead_frac/relu5_3"),
)
HISTORY = ("loss", "accuracy", "grad_norm", *(f"grad_norm/{k}" for k in TRACKED_GRADS))
HISTORY += TRACKED_STATS

SWEEP_LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
# width, image size, batch, steps of the variant runs, main lr, sweep lrs, seeds, variants
DEFAULT = dict(width=0.125, image_size=32, batch_size=32, steps=300, lr=0.03, sweep_lrs=SWEEP_LRS)
DEFAULT.update(seeds=[0, 1, 2], sweep_cap=150, variants=list(VARIANTS), test_examples=500)
QUICK = dict(DEFAULT, width=0.0625, batch_size=16, steps=30, lr=0.1, sweep_lrs=[], seeds=[0])
QUICK.update(sweep_cap=30, variants=["relu_scores", "linear_scores"], test_examples=0)
# Per-layer statistics only where they are checked: each costs seconds of compile.
QUICK.update(diagnostics=["relu_scores"])
# --full: 1,600 images at 224x224 kept in memory (~1 GB), cycled
FULL = dict(DEFAULT, width=1.0, image_size=224, batch_size=16, data_batches=100)
PRESETS = {"default": DEFAULT, "quick": QUICK, "full": FULL}


def parse_args(argv=None):
    quick = "tiny run for the test suite (~30 s)"
    full = "original width and 224x224 input (accelerator)"
    p = experiment.parser(__doc__, experiment.results_dir(__file__), quick=quick, full=full)
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default %(default)s)")
    p.add_argument("--steps", type=int, help="updates per variant run (preset default)")
    p.add_argument("--lr", type=float, help="learning rate of the variant runs (preset default)")
    p.add_argument(
        "--replot", action="store_true", help="only redraw the PNGs from OUT/result.json"
    )
    return p.parse_args(argv)


def load_data(image_size: int, batch_size: int, n_batches: int, test_examples: int, seed: int = 0):
    """``n_batches`` training batches (kept in memory: every run sees the same sequence) and a
    test slice."""
    from vggjax.data import load

    options = dict(image_size=image_size, channels=3, augment="none")
    it, info = load(DATASET, global_batch_size=batch_size, train=True, seed=seed, **options)
    train = [{k: jnp.asarray(v) for k, v in next(it).items()} for _ in range(n_batches)]
    test = []
    if test_examples:
        batches, _ = load(DATASET, global_batch_size=250, train=False, **options)
        for b in batches:
            test.append({k: jnp.asarray(v) for k, v in b.items()})
            if 250 * len(test) >= test_examples:
                break
    return train, test, info


def label_stats(train: list[dict]) -> dict:
    """Class frequencies of the training batches and the loss of the best constant prediction."""
    y = np.concatenate([np.asarray(b["label"]) for b in train])
    p = y.mean(axis=0)
    # The best constant logit for class c is log(p/(1-p)) < 0 when p < 1/2; its loss is the
    # binary entropy. A ReLU'd logit cannot go below 0, so its best constant is 0 → ln 2.
    entropy = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    return {
        "class_frequency": p.tolist(),
        "mean_labels_per_image": float(y.sum(axis=1).mean()),
        "prior_entropy_loss": entropy,
        "best_constant_logits": np.log(p / (1 - p)).tolist(),
        "mean_logit_gradient_at_zero": ((0.5 - p) / len(p)).tolist(),
        "chance_mAP": float(np.mean(p.tolist())),  # mAP of a constant score
    }


class Runner:
    """Builds a variant, its optimizer and its jitted train step (cached per variant and lr)."""

    def __init__(self, width: float, num_classes: int, momentum: float, total_steps: int):
        self.width, self.num_classes = width, num_classes
        self.momentum, self.total_steps = momentum, total_steps
        self._steps: dict = {}
        self._evals: dict = {}

    def model(self, variant: str, seed: int):
        return wsdr(
            num_classes=self.num_classes,
            width=self.width,
            init="torch_default",
            rngs=nnx.Rngs(seed),
            **VARIANTS[variant],
        )

    def start(self, variant: str, lr: float, seed: int, with_diagnostics: bool = True):
        """``(state, step_fn, graphdef)`` for a fresh model of ``variant`` with ``seed``."""
        opt = dict(learning_rate=lr, momentum=self.momentum)
        tx = optim.make_optimizer(opt, 1, self.total_steps)
        graphdef, _, state = state_from_model(self.model(variant, seed), tx)
        key = (variant, lr)
        if key not in self._steps:
            # One compiled step per (variant, lr); seeds share it (same graph, same optimizer).
            loss = "multilabel_soft_margin"
            step = make_train_step(graphdef, tx, loss, with_diagnostics=with_diagnostics)
            self._steps[key] = (jax.jit(step), graphdef)
        return state, *self._steps[key]

    def forward(self, variant: str, graphdef):
        """Jitted ``(state, images) -> (logits, score pre-activation map)`` in training mode.

        Training mode = BatchNorm on batch statistics: with PyTorch momentum 0 (WSDR's
        setting) the running statistics never leave their initial (0, 1), so eval mode
        would not be the network that was trained (measured separately).
        """
        if variant not in self._evals:

            def fwd(state, x):
                logits, feats = merge(graphdef, state)(x, return_features=True)
                return logits, feats["score"]

            self._evals[variant] = jax.jit(fwd)
        return self._evals[variant]


def score_bias(state) -> np.ndarray:
    return np.asarray(nnx.to_pure_dict(state.params)["head"]["score"]["bias"])


class Collapse:
    """A ``stop`` for :func:`vggjax.experiment.train`: tracks when the run has collapsed.

    The run has *collapsed* at update ``t`` (0-based: the metrics of step ``t + 1`` are of the
    parameters after ``t`` updates) when every score-map entry is exactly 0 and the global
    gradient norm is exactly 0 from ``t`` on; :attr:`at` is the first such ``t``, or None.
    With ``after``, the run stops that many updates after a collapse.
    """

    def __init__(self, score_relu: bool, after: int | None) -> None:
        self.score_relu, self.after, self.at = score_relu, after, None

    def __call__(self, step: int, m: dict) -> bool:
        t = step - 1
        dead = self.score_relu and m.get("zero_frac/score_relu") == 1.0 and m["grad_norm"] == 0.0
        self.at = (t if self.at is None else self.at) if dead else None
        return self.after is not None and self.at is not None and t - self.at >= self.after


def train_run(
    runner: Runner,
    variant: str,
    lr: float,
    seed: int,
    data: list[dict],
    steps: int,
    stop_after_collapse: int | None = None,
    with_diagnostics: bool = True,
):
    """Train one model, recording per-step metrics; returns ``(record, final state, graphdef)``.

    Every run cycles through the same ``data`` batches; ``history["score_bias"][t]`` is the
    score layer's bias before update ``t``. ``stop_after_collapse``: see :class:`Collapse`.
    """
    state, step, graphdef = runner.start(variant, lr, seed, with_diagnostics)
    collapse = Collapse(VARIANTS[variant].get("score_relu", True), stop_after_collapse)
    run = experiment.train(
        state,
        step,
        itertools.cycle(data),
        steps,
        keys=HISTORY,
        probe=lambda _, s: score_bias(s).tolist(),
        probe_every=1,
        probe_at_start=True,
        stop=collapse,
    )
    hist = {**run.lists(HISTORY), "score_bias": [b for _, b in run.probes[: len(run.steps)]]}
    loss, dead = hist["loss"], hist.get("dead_frac/score_relu")
    rec = {
        "variant": variant,
        "lr": lr,
        "momentum": runner.momentum,
        "effective_lr": lr / (1.0 - runner.momentum),
        "seed": seed,
        "steps_run": len(loss),
        "updates_to_collapse": collapse.at,
        "updates_to_all_dead": next((i for i, d in enumerate(dead) if d == 1.0), None)
        if dead
        else None,
        "dead_frac_at_init": dead[0] if dead else None,
        "final_loss": loss[-1],
        "final_loss_minus_ln2": loss[-1] - LN2,
        "mean_loss_last_20": float(np.mean(loss[-20:])),
        "mean_loss_last_10": float(np.mean(loss[-10:])),
        "final_grad_norm": hist["grad_norm"][-1],
        "seconds_first_step_incl_compile": run.first_step_seconds,
        "seconds_total": run.seconds,
        "history": hist,
    }
    return rec, run.state, graphdef


def evaluate(runner: Runner, variant: str, graphdef, state, test: list[dict]) -> dict:
    """Test loss / mAP / accuracy, and the largest score pre-activation per class (test images)."""
    if not test:
        return {}
    fwd = runner.forward(variant, graphdef)
    logits, peaks = [], []
    for b in test:
        lg, score = fwd(state, b["image"])
        logits.append(lg)
        peaks.append(jnp.max(score, axis=(0, 1, 2)))
    logits = jnp.concatenate(logits)
    labels = jnp.concatenate([b["label"] for b in test])
    peak = np.max(np.stack([np.asarray(p) for p in peaks]), axis=0)
    return {
        "test_examples": int(labels.shape[0]),
        "test_loss": float(losses.multilabel_soft_margin(logits, labels)),
        "test_mAP": float(losses.mean_average_precision(logits, labels)),
        "test_accuracy": float(losses.multilabel_accuracy(logits, labels)),
        "test_outputs_all_zero": bool(jnp.all(logits == 0)),
        "test_max_score_preactivation_per_class": peak.tolist(),
    }


def bn_eval_mode_loss(variant: str, graphdef, state, test: list[dict]) -> float | None:
    """Test loss of a BN variant in eval mode (running statistics, which momentum 0 froze)."""
    if not test or not VARIANTS[variant].get("batch_norm"):
        return None
    model = merge(graphdef, state)
    model.eval()
    fwd = nnx.jit(lambda m, x: m(x))
    logits = jnp.concatenate([fwd(model, b["image"]) for b in test])
    labels = jnp.concatenate([b["label"] for b in test])
    return float(losses.multilabel_soft_margin(logits, labels))


def init_analysis(runner: Runner, data: list[dict], seed: int) -> dict:
    """Why units die: at init the score pre-activation is bias-dominated (torch default init
    shrinks the signal)."""
    model = runner.model("relu_scores", seed)
    logits, feats = nnx.jit(lambda m, x: m(x, return_features=True))(model, data[0]["image"])
    score = np.asarray(feats["score"])  # (N, h, w, C) pre-activation
    bias = np.asarray(model.head.score.bias.get_value())
    signal = score - bias
    fan_in = int(np.prod(model.head.score.kernel.get_value().shape[:3]))
    peak = score.max(axis=(0, 1, 2))
    y = np.asarray(data[0]["label"])
    sig = 1.0 / (1.0 + np.exp(-np.asarray(logits)))
    std_by_layer = {
        k: float(np.std(np.asarray(v)))
        for k, v in feats.items()
        if k.startswith("relu") or k in ("head_relu1", "score")
    }
    return {
        "score_bias": bias.tolist(),
        "score_bias_bound_1_over_sqrt_fan_in": 1.0 / math.sqrt(fan_in),
        "score_signal_std": float(signal.std()),
        "score_signal_max_abs": float(np.abs(signal).max()),
        "score_preactivation_peak_per_class": peak.tolist(),
        "classes_dead_at_init": int(np.sum(peak <= 0)),
        "classes_with_negative_bias": int(np.sum(bias < 0)),
        "relu_output_std_by_layer": std_by_layer,
        "mean_dloss_dlogit_first_batch": ((sig - y).mean(axis=0) / y.shape[1]).tolist(),
    }


# --------------------------------------------------------------------------- main


def run_variants(cfg: dict, runner: Runner, train: list, test: list) -> dict:
    """The seed's network and its fixes, lr ``cfg["lr"]``, seed ``cfg["seeds"][0]``."""
    out = {}
    for variant in cfg["variants"]:
        diag = cfg.get("diagnostics", "all") == "all" or variant in cfg["diagnostics"]
        rec, state, graphdef = train_run(
            runner, variant, cfg["lr"], cfg["seeds"][0], train, cfg["steps"], with_diagnostics=diag
        )
        rec.update(evaluate(runner, variant, graphdef, state, test))
        bn_eval = bn_eval_mode_loss(variant, graphdef, state, test)
        if bn_eval is not None:
            rec["test_loss_eval_mode_frozen_running_stats"] = bn_eval
        out[variant] = rec
        print(
            f"{variant:25s} loss {rec['history']['loss'][0]:.6f} -> {rec['final_loss']:.6f}  "
            f"collapse@{rec['updates_to_collapse']}  test mAP "
            f"{rec.get('test_mAP', float('nan')):.3f}  ({rec['seconds_total']:.0f}s)",
            flush=True,
        )
    return out


def run_sweep(cfg: dict, runner: Runner, train: list, relu: dict | None) -> dict:
    """The seed's network at every sweep lr and seed, until 10 updates after its collapse."""
    runs = []
    for lr, seed in itertools.product(cfg["sweep_lrs"], cfg["seeds"]):
        same = lr == cfg["lr"] and seed == cfg["seeds"][0] and cfg["sweep_cap"] <= cfg["steps"]
        if relu is not None and same:
            rec = dict(relu)  # the variant run is this very run
        else:
            cap = cfg["sweep_cap"]
            rec, _, _ = train_run(
                runner, "relu_scores", lr, seed, train, cap, stop_after_collapse=10
            )
        keep = ("loss", "grad_norm", "dead_frac/score_relu", "zero_frac/score_relu")
        runs.append({**rec, "history": {k: v for k, v in rec["history"].items() if k in keep}})
        print(
            f"sweep lr {lr:<6g} seed {seed}: collapse after {rec['updates_to_collapse']} updates "
            f"(dead at init {rec['dead_frac_at_init']:.1f})",
            flush=True,
        )
    med = {}
    for lr in cfg["sweep_lrs"]:
        c = [r["updates_to_collapse"] for r in runs if r["lr"] == lr]
        med[str(lr)] = float(np.median(c)) if all(x is not None for x in c) else None
    return {"runs": runs, "median_updates_to_collapse_by_lr": med}


def checks(variant_runs: dict) -> dict:
    out = {}
    if "relu_scores" in variant_runs:
        relu = variant_runs["relu_scores"]
        out["relu_loss_is_ln2_within_1e-4"] = abs(relu["final_loss"] - LN2) < 1e-4
        out["relu_all_score_units_dead"] = relu["history"]["dead_frac/score_relu"][-1] == 1.0
        out["relu_grad_exactly_zero"] = relu["final_grad_norm"] == 0.0
        out["relu_collapsed_for_good"] = relu["updates_to_collapse"] is not None
    if "linear_scores" in variant_runs:
        lin = variant_runs["linear_scores"]
        start = min(lin["history"]["loss"][0], LN2)
        out["linear_scores_lower_the_loss"] = lin["mean_loss_last_10"] < start - 0.01
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot:
        with open(os.path.join(args.out, "result.json")) as f:
            result = json.load(f)
        make_plots(result, args.out)
        return result
    preset = "quick" if args.quick else "full" if args.full else "default"
    cfg = dict(PRESETS[preset])
    cfg.update({k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None})
    cfg.update(momentum=args.momentum, preset=preset)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    n_batches = cfg.get("data_batches") or max(cfg["steps"], cfg["sweep_cap"])
    train, test, info = load_data(
        cfg["image_size"], cfg["batch_size"], n_batches, cfg["test_examples"]
    )
    t_data = time.perf_counter() - t0
    runner = Runner(cfg["width"], info.num_classes, cfg["momentum"], cfg["steps"])
    # Skipped in --quick (one more compile); the test suite needs only the runs.
    init = None if args.quick else init_analysis(runner, train, cfg["seeds"][0])
    variant_runs = run_variants(cfg, runner, train, test)
    sweep = run_sweep(cfg, runner, train, variant_runs.get("relu_scores"))

    result = experiment.record(
        argv,
        experiment="gap_dead_relu",
        config={
            **cfg,
            "num_classes": info.num_classes,
            "init": "torch_default",
            "loss": "multilabel_soft_margin",
            "optimizer": "SGD (optax via vggjax.optim.make_optimizer)",
            "loop": "vggjax.experiment.train (vggjax.training.fit), every step's metrics",
        },
        data={
            "dataset": DATASET,
            "why": "PASCAL VOC 2007 (the seed's data, 20 classes) cannot be downloaded offline",
            "description": "1-4 real handwritten digits (scikit-learn's 8x8 digits, upsampled) "
            "tiled in a 2x2 grid, 10-way multi-hot labels; 6,000 train / 1,500 test",
            "train_batches": f"the first {n_batches} batches of the train split (shuffle seed 0, "
            "no augmentation), identical for every run (cycled if a run is longer)",
            "test": f"first {cfg['test_examples']} test images",
        },
        labels=label_stats(train),
        init_analysis=init,
        checks=checks(variant_runs),
        variant_runs=variant_runs,
        lr_sweep=sweep,
        seconds={"data": t_data, "total": None},
    )
    result["plots"] = make_plots(result, args.out)
    result["seconds"]["total"] = time.perf_counter() - t0
    experiment.write_result(result, args.out)
    med = sweep["median_updates_to_collapse_by_lr"]
    summary = {"checks": result["checks"], "median_updates_to_collapse_by_lr": med}
    print(json.dumps({**summary, "seconds": result["seconds"]}, indent=2))
    return result


if __name__ == "__main__":
    main()
