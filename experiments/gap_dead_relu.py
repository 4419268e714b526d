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

Everything is library code (:func:`vggjax.wsdr`, :func:`vggjax.train.make_train_step`
with per-layer diagnostics, :func:`vggjax.optim.make_optimizer`); this script only runs
and records. Data: VOC 2007 is not available offline, so the embedded multi-label
``vggjax_digits_multilabel`` stands in (1–4 real handwritten digits tiled 2×2, 10-way
multi-hot labels, so 10 classes instead of VOC's 20). Default size: width 1/8, 32×32
inputs (a 2×2 conv5 map instead of 14×14); ``--full`` uses the original width and 224×224
(the 14×14 map of the seed) — hours on a CPU, minutes on an accelerator.

    python experiments/gap_dead_relu.py            # ~5-8 min on 2 CPU cores
    python experiments/gap_dead_relu.py --quick    # ~30 s: the test suite's check
    python experiments/gap_dead_relu.py --full     # original width and 224x224 input
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import vggjax
from vggjax import diagnostics, losses, optim
from vggjax import train as vtrain
from vggjax.metrics import dump_json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "gap_dead_relu")
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
SHORT = {
    "relu_scores": "ReLU scores\n(seed)",
    "linear_scores": "linear\nscores",
    "fc_after_gap": "FC after\nGAP",
    "batchnorm": "BN,\nReLU scores",
    "batchnorm_linear_scores": "BN, linear\nscores",
}
LABELS = {
    "relu_scores": "ReLU on scores (seed)",
    "linear_scores": "fix: no ReLU on scores",
    "fc_after_gap": "fix: FC after GAP (poster's)",
    "batchnorm": "BatchNorm (ReLU kept)",
    "batchnorm_linear_scores": "BatchNorm + no score ReLU",
}
# Layers whose gradient norm is followed step by step (those that exist in a variant).
TRACKED_GRADS = (
    "features/conv1_1",
    "features/conv3_1",
    "features/conv5_3",
    "head/conv1",
    "head/score",
    "head/fc",
)
TRACKED_STATS = (
    "dead_frac/score_relu",
    "zero_frac/score_relu",
    "zero_frac/gap",
    "act_mean/score",
    "act_std/score",
    "dead_frac/head_relu1",
    "dead_frac/relu5_3",
)

PRESETS = {
    # width, image size, batch, steps of the variant runs, main lr, sweep lrs, seeds, variants
    "default": dict(
        width=0.125,
        image_size=32,
        batch_size=32,
        steps=300,
        lr=0.03,
        sweep_lrs=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        seeds=[0, 1, 2],
        sweep_cap=150,
        variants=list(VARIANTS),
        test_examples=500,
    ),
    "quick": dict(
        width=0.0625,
        image_size=32,
        batch_size=16,
        steps=30,
        lr=0.1,
        sweep_lrs=[],
        seeds=[0],
        sweep_cap=30,
        variants=["relu_scores", "linear_scores"],
        test_examples=0,
        # Per-layer statistics only where they are checked: each costs seconds of compile.
        diagnostics=["relu_scores"],
    ),
    "full": dict(
        width=1.0,
        image_size=224,
        batch_size=16,
        steps=300,
        lr=0.03,
        sweep_lrs=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        seeds=[0, 1, 2],
        sweep_cap=150,
        variants=list(VARIANTS),
        test_examples=500,
        data_batches=100,  # 1,600 images at 224x224 kept in memory (~1 GB), cycled
    ),
}


# --------------------------------------------------------------------------- helpers


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny run for the test suite (~30 s)")
    mode.add_argument(
        "--full", action="store_true", help="original width and 224x224 input (accelerator)"
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default %(default)s)")
    p.add_argument(
        "--steps", type=int, default=None, help="updates per variant run (preset default)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate of the variant runs (preset default)"
    )
    p.add_argument(
        "--replot", action="store_true", help="only redraw the PNGs from OUT/result.json"
    )
    return p.parse_args(argv)


def versions() -> dict:
    import flax
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "vggjax": vggjax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.machine(),
    }


def load_data(image_size: int, batch_size: int, n_batches: int, test_examples: int, seed: int = 0):
    """``n_batches`` training batches (kept in memory: every run sees the same sequence) and a test slice."""
    from vggjax.data import load

    it, info = load(
        DATASET,
        global_batch_size=batch_size,
        train=True,
        image_size=image_size,
        channels=3,
        seed=seed,
        augment="none",
    )
    train = [{k: jnp.asarray(v) for k, v in next(it).items()} for _ in range(n_batches)]
    test = []
    if test_examples:
        batches, _ = load(
            DATASET, global_batch_size=250, train=False, image_size=image_size, channels=3
        )
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
    }


class Runner:
    """Builds a variant, its optimizer and its jitted train step (cached per variant and lr)."""

    def __init__(self, width: float, num_classes: int, momentum: float, total_steps: int):
        self.width, self.num_classes, self.momentum, self.total_steps = (
            width,
            num_classes,
            momentum,
            total_steps,
        )
        self._steps: dict = {}
        self._evals: dict = {}
        self.compile_seconds = 0.0

    def model(self, variant: str, seed: int):
        return vggjax.wsdr(
            num_classes=self.num_classes,
            width=self.width,
            init="torch_default",
            rngs=nnx.Rngs(seed),
            **VARIANTS[variant],
        )

    def start(self, variant: str, lr: float, seed: int, with_diagnostics: bool = True):
        """``(state, step_fn, graphdef)`` for a fresh model of ``variant`` with ``seed``."""
        tx = optim.make_optimizer(
            dict(learning_rate=lr, momentum=self.momentum), 1, self.total_steps
        )
        graphdef, _, state = vtrain.state_from_model(self.model(variant, seed), tx)
        key = (variant, lr)
        if key not in self._steps:
            # One compiled step per (variant, lr); seeds share it (same graph, same optimizer).
            step = vtrain.make_train_step(
                graphdef, tx, "multilabel_soft_margin", with_diagnostics=with_diagnostics
            )
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
                logits, feats = vtrain.merge(graphdef, state)(x, return_features=True)
                return logits, feats["score"]

            self._evals[variant] = jax.jit(fwd)
        return self._evals[variant]


def score_bias(state) -> np.ndarray:
    return np.asarray(nnx.to_pure_dict(state.params)["head"]["score"]["bias"])


def train_run(
    runner: Runner,
    variant: str,
    lr: float,
    seed: int,
    data: list[dict],
    steps: int,
    stop_after_collapse: int | None = None,
    with_diagnostics: bool = True,
) -> tuple[dict, object, object]:
    """Train one model, recording per-step metrics; returns ``(record, final state, graphdef)``.

    The metrics of step ``t`` come from the forward/backward pass on the parameters after
    ``t`` updates. The run has *collapsed* at ``t`` when every score-map entry is exactly 0
    and the global gradient norm is exactly 0 from ``t`` on; ``updates_to_collapse`` is the
    first such ``t``. ``stop_after_collapse``: stop that many steps after a collapse.
    """
    state, step, graphdef = runner.start(variant, lr, seed, with_diagnostics)
    hist: dict[str, list] = {"loss": [], "accuracy": [], "grad_norm": []}
    hist.update({f"grad_norm/{k}": [] for k in TRACKED_GRADS})
    hist.update({k: [] for k in TRACKED_STATS})
    hist["score_bias"] = []
    collapse, t0, first = None, time.perf_counter(), None
    relu = VARIANTS[variant].get("score_relu", True)
    for t in range(steps):
        hist["score_bias"].append(score_bias(state).tolist())
        state, metrics = step(state, data[t % len(data)])
        m = diagnostics.to_python(metrics)
        if first is None:
            first = time.perf_counter() - t0  # compile + first step
        for k in hist:
            if k != "score_bias":
                hist[k].append(m.get(k))
        dead_now = relu and m.get("zero_frac/score_relu") == 1.0 and m["grad_norm"] == 0.0
        collapse = (t if collapse is None else collapse) if dead_now else None
        if (
            stop_after_collapse is not None
            and collapse is not None
            and t - collapse >= stop_after_collapse
        ):
            break
    hist = {k: v for k, v in hist.items() if any(x is not None for x in v)}
    dead = hist.get("dead_frac/score_relu")
    rec = {
        "variant": variant,
        "lr": lr,
        "momentum": runner.momentum,
        "effective_lr": lr / (1.0 - runner.momentum),
        "seed": seed,
        "steps_run": len(hist["loss"]),
        "updates_to_collapse": collapse,
        "updates_to_all_dead": next((i for i, d in enumerate(dead) if d == 1.0), None)
        if dead
        else None,
        "dead_frac_at_init": dead[0] if dead else None,
        "final_loss": hist["loss"][-1],
        "final_loss_minus_ln2": hist["loss"][-1] - LN2,
        "mean_loss_last_20": float(np.mean(hist["loss"][-20:])),
        "mean_loss_last_10": float(np.mean(hist["loss"][-10:])),
        "final_grad_norm": hist["grad_norm"][-1],
        "seconds_first_step_incl_compile": first,
        "seconds_total": time.perf_counter() - t0,
        "history": hist,
    }
    return rec, state, graphdef


def evaluate(runner: Runner, variant: str, graphdef, state, test: list[dict]) -> dict:
    """Test loss / mAP / accuracy, and the largest score pre-activation per class over the test images."""
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
    """Test loss of a BN variant in eval mode (running statistics, which momentum 0 froze at init)."""
    if not test or not VARIANTS[variant].get("batch_norm"):
        return None
    model = vtrain.merge(graphdef, state)
    model.eval()
    fwd = nnx.jit(lambda m, x: m(x))
    logits = jnp.concatenate([fwd(model, b["image"]) for b in test])
    labels = jnp.concatenate([b["label"] for b in test])
    return float(losses.multilabel_soft_margin(logits, labels))


def init_analysis(runner: Runner, data: list[dict], seed: int) -> dict:
    """Why units die: at init the score pre-activation is bias-dominated (torch default init shrinks the signal)."""
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


# --------------------------------------------------------------------------- plots


def _smooth(x, k=10):
    x = np.asarray(x, float)
    if len(x) < k:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([x[: k - 1], out])


def plot_main(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["variant_runs"]
    colors = {
        "relu_scores": "C3",
        "linear_scores": "C0",
        "fc_after_gap": "C2",
        "batchnorm": "C1",
        "batchnorm_linear_scores": "C4",
    }
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    cfg = res["config"]
    floor = 1e-9

    ax = axes[0, 0]
    for name, r in runs.items():
        h = r["history"]["loss"]
        ax.plot(h, color=colors[name], alpha=0.25, lw=0.7)
        ax.plot(_smooth(h), color=colors[name], label=LABELS[name])
    ax.axhline(LN2, color="k", ls="--", lw=0.8, label="ln 2 = 0.693147")
    ax.axhline(
        res["labels"]["prior_entropy_loss"],
        color="gray",
        ls=":",
        lw=1,
        label=f"best constant prediction = {res['labels']['prior_entropy_loss']:.3f}",
    )
    ax.set_xlabel("update")
    ax.set_ylabel("train loss (multilabel soft margin, per label)")
    ax.set_title(f"(a) loss, lr {cfg['lr']} momentum {cfg['momentum']}")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    for name, r in runs.items():
        d = r["history"].get("dead_frac/score_relu")
        if d is not None:
            ax.plot(d, color=colors[name], label=LABELS[name])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("update")
    ax.set_ylabel("fraction of score units dead\n(0 for every image and position in the batch)")
    ax.set_title("(b) dead score ReLU units")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    for name, r in runs.items():
        g = np.maximum(np.asarray(r["history"]["grad_norm"], float), floor)
        ax.semilogy(g, color=colors[name], label=LABELS[name], lw=0.9)
    ax.axhline(floor, color="k", lw=0.5)
    ax.text(0, floor * 1.6, "exactly 0 (drawn at 1e-9)", fontsize=7)
    ax.set_xlabel("update")
    ax.set_ylabel("global gradient norm")
    ax.set_title("(c) gradient norm")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    h = runs["relu_scores"]["history"]
    for i, k in enumerate(TRACKED_GRADS):
        key = f"grad_norm/{k}"
        if key in h:
            ax.semilogy(np.maximum(np.asarray(h[key], float), floor), label=k, color=f"C{i}")
    ax.axhline(floor, color="k", lw=0.5)
    ax.set_xlabel("update")
    ax.set_ylabel("gradient norm of the layer")
    collapse = runs["relu_scores"]["updates_to_collapse"]
    ax.set_title(f"(d) seed network: per-layer gradients (all exactly 0 from update {collapse})")
    ax.set_xlim(-1, max(30, 3 * (collapse or 10)))
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    sweep = res["lr_sweep"]
    cap = cfg["sweep_cap"]
    if sweep["runs"]:
        for i, seed in enumerate(cfg["seeds"]):
            mine = [r for r in sweep["runs"] if r["seed"] == seed]
            done = [r for r in mine if r["updates_to_collapse"] is not None]
            alive = [r["lr"] for r in mine if r["updates_to_collapse"] is None]
            jitter = 1 + 0.04 * (i - 1)  # seeds side by side
            ax.plot(
                [r["lr"] * jitter for r in done],
                [max(r["updates_to_collapse"], 0.8) for r in done],
                "o",
                color=f"C{i}",
                label=f"seed {seed}",
            )
            if alive:
                ax.plot(alive, [cap] * len(alive), "^", color=f"C{i}", mfc="none")
        med = [
            (float(k), v)
            for k, v in sweep["median_updates_to_collapse_by_lr"].items()
            if v is not None
        ]
        ax.plot([k for k, _ in med], [max(v, 0.8) for _, v in med], "k-", lw=0.8, label="median")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no learning-rate sweep in this run", ha="center", transform=ax.transAxes)
    ax.set_xlabel(f"learning rate (momentum {cfg['momentum']}; effective lr = lr / (1 - momentum))")
    ax.set_ylabel("updates until outputs and gradients are exactly 0")
    ax.set_title(f"(e) collapse vs learning rate (open triangles: alive after {cap})")

    ax = axes[1, 2]
    names = [n for n in runs if "test_mAP" in runs[n]]
    if names:
        x = np.arange(len(names))
        ax.bar(
            x - 0.2,
            [runs[n]["test_mAP"] for n in names],
            0.4,
            color=[colors[n] for n in names],
            label="test mAP",
        )
        ax.bar(
            x + 0.2,
            [runs[n]["test_loss"] for n in names],
            0.4,
            color=[colors[n] for n in names],
            alpha=0.4,
            hatch="//",
            label="test loss",
        )
        ax.axhline(
            res["labels"]["chance_mAP"],
            color="gray",
            ls=":",
            label=f"chance mAP ≈ {res['labels']['chance_mAP']:.2f}",
        )
        ax.axhline(LN2, color="k", ls="--", lw=0.8, label="ln 2")
        ax.set_xticks(x)
        ax.set_xticklabels([SHORT[n] for n in names], fontsize=8)
        ax.set_title(
            f"(f) after {cfg['steps']} updates: {res['config']['test_examples']} test images"
        )
        ax.legend(fontsize=7)
    else:
        ax.axis("off")
    fig.suptitle(
        f"WSDR (VGG-16 conv1-5 + GAP head, PyTorch default init), width {cfg['width']:g}, "
        f"{cfg['image_size']}x{cfg['image_size']} input, batch {cfg['batch_size']}, {DATASET}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_sweep(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in res["lr_sweep"]["runs"] if r["seed"] == res["config"]["seeds"][0]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, r in enumerate(sorted(runs, key=lambda r: r["lr"])):
        h = r["history"]
        axes[0].plot(h["loss"], color=f"C{i}", label=f"lr {r['lr']:g}")
        axes[1].plot(h["dead_frac/score_relu"], color=f"C{i}", label=f"lr {r['lr']:g}")
    axes[0].axhline(LN2, color="k", ls="--", lw=0.8)
    last = max((r["updates_to_collapse"] or r["steps_run"]) for r in runs)
    for ax in axes:
        ax.set_xlim(-1, last + 15)
    axes[0].set_ylabel("train loss")
    axes[1].set_ylabel("fraction of dead score units")
    for ax in axes:
        ax.set_xlabel("update")
        ax.legend(fontsize=7)
    axes[0].set_title("seed network, seed 0: loss until it sticks at ln 2")
    axes[1].set_title("seed network, seed 0: dead score units")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot:
        with open(os.path.join(args.out, "result.json")) as f:
            result = json.load(f)
        plot_main(result, os.path.join(args.out, "gap_dead_relu.png"))
        if result["lr_sweep"]["runs"]:
            plot_sweep(result, os.path.join(args.out, "gap_dead_relu_sweep.png"))
        return result
    preset = "quick" if args.quick else "full" if args.full else "default"
    cfg = dict(PRESETS[preset])
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.lr is not None:
        cfg["lr"] = args.lr
    cfg["momentum"] = args.momentum
    cfg["preset"] = preset
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    n_batches = cfg.get("data_batches") or max(cfg["steps"], cfg["sweep_cap"])
    train, test, info = load_data(
        cfg["image_size"], cfg["batch_size"], n_batches, cfg["test_examples"]
    )
    t_data = time.perf_counter() - t0
    lab = label_stats(train)
    lab["chance_mAP"] = float(np.mean(lab["class_frequency"]))  # mAP of a constant score
    runner = Runner(cfg["width"], info.num_classes, cfg["momentum"], cfg["steps"])
    # Skipped in --quick (one more compile); the test suite needs only the runs.
    init = None if args.quick else init_analysis(runner, train, cfg["seeds"][0])

    variant_runs = {}
    for variant in cfg["variants"]:
        diag = cfg.get("diagnostics", "all") == "all" or variant in cfg["diagnostics"]
        rec, state, graphdef = train_run(
            runner, variant, cfg["lr"], cfg["seeds"][0], train, cfg["steps"], with_diagnostics=diag
        )
        rec.update(evaluate(runner, variant, graphdef, state, test))
        bn_eval = bn_eval_mode_loss(variant, graphdef, state, test)
        if bn_eval is not None:
            rec["test_loss_eval_mode_frozen_running_stats"] = bn_eval
        variant_runs[variant] = rec
        print(
            f"{variant:25s} loss {rec['history']['loss'][0]:.6f} -> {rec['final_loss']:.6f}  "
            f"collapse@{rec['updates_to_collapse']}  test mAP {rec.get('test_mAP', float('nan')):.3f}  "
            f"({rec['seconds_total']:.0f}s)",
            flush=True,
        )

    sweep_runs = []
    main_relu = variant_runs.get("relu_scores")
    for lr in cfg["sweep_lrs"]:
        for seed in cfg["seeds"]:
            if (
                main_relu is not None
                and lr == cfg["lr"]
                and seed == cfg["seeds"][0]
                and cfg["sweep_cap"] <= cfg["steps"]
            ):
                rec = dict(main_relu)  # the variant run above is this very run
            else:
                rec, _, _ = train_run(
                    runner, "relu_scores", lr, seed, train, cfg["sweep_cap"], stop_after_collapse=10
                )
            keep = ("loss", "grad_norm", "dead_frac/score_relu", "zero_frac/score_relu")
            sweep_runs.append(
                {**rec, "history": {k: v for k, v in rec["history"].items() if k in keep}}
            )
            print(
                f"sweep lr {lr:<6g} seed {seed}: collapse after {rec['updates_to_collapse']} updates "
                f"(dead at init {rec['dead_frac_at_init']:.1f})",
                flush=True,
            )
    med = {}
    for lr in cfg["sweep_lrs"]:
        c = [r["updates_to_collapse"] for r in sweep_runs if r["lr"] == lr]
        med[str(lr)] = float(np.median(c)) if all(x is not None for x in c) else None

    relu = variant_runs.get("relu_scores")
    checks = {}
    if relu is not None:
        h = relu["history"]
        checks["relu_loss_is_ln2_within_1e-4"] = abs(relu["final_loss"] - LN2) < 1e-4
        checks["relu_all_score_units_dead"] = h["dead_frac/score_relu"][-1] == 1.0
        checks["relu_grad_exactly_zero"] = relu["final_grad_norm"] == 0.0
        checks["relu_collapsed_for_good"] = relu["updates_to_collapse"] is not None
    if "linear_scores" in variant_runs:
        lin = variant_runs["linear_scores"]
        checks["linear_scores_lower_the_loss"] = (
            lin["mean_loss_last_10"] < min(lin["history"]["loss"][0], LN2) - 0.01
        )

    result = {
        "experiment": "gap_dead_relu",
        "command": "python "
        + " ".join(
            [os.path.relpath(__file__, os.path.dirname(HERE))]
            + (list(argv) if argv is not None else sys.argv[1:])
        ),
        "config": {
            **cfg,
            "num_classes": info.num_classes,
            "init": "torch_default",
            "loss": "multilabel_soft_margin",
            "optimizer": "SGD (optax via vggjax.optim.make_optimizer)",
        },
        "data": {
            "dataset": DATASET,
            "why": "PASCAL VOC 2007 (the seed's data, 20 classes) cannot be downloaded offline",
            "description": "1-4 real handwritten digits (scikit-learn's 8x8 digits, upsampled) tiled in a 2x2 grid, "
            "10-way multi-hot labels; 6,000 train / 1,500 test",
            "train_batches": f"the first {n_batches} batches of the train split (shuffle seed 0, no augmentation), "
            "identical for every run (cycled if a run is longer)",
            "test": f"first {cfg['test_examples']} test images",
        },
        "labels": lab,
        "init_analysis": init,
        "checks": checks,
        "variant_runs": variant_runs,
        "lr_sweep": {"runs": sweep_runs, "median_updates_to_collapse_by_lr": med},
        "seconds": {"data": t_data, "total": None},
        "versions": versions(),
        "plots": ["gap_dead_relu.png"] + (["gap_dead_relu_sweep.png"] if sweep_runs else []),
    }
    if "relu_scores" in variant_runs:
        plot_main(result, os.path.join(args.out, "gap_dead_relu.png"))
    if sweep_runs:
        plot_sweep(result, os.path.join(args.out, "gap_dead_relu_sweep.png"))
    result["seconds"]["total"] = time.perf_counter() - t0
    dump_json(result, os.path.join(args.out, "result.json"))
    print(
        json.dumps(
            {
                "checks": checks,
                "median_updates_to_collapse_by_lr": med,
                "seconds": result["seconds"],
            },
            indent=2,
        )
    )
    return result


if __name__ == "__main__":
    main()
