"""Why a second 1×1 conv (``fc7_1``) keeps slim-OverFeat at loss ln 3 (reference case, seed 003).

The seed's network (:class:`vggjax.models.reference.OverFeatSlim`: 60×60×3 in, 3 classes)
has fc6 (3×3 conv, 512) and fc7 (1×1, 1024) with truncated-normal(0.005) weights and bias
0.1, and weight decay 5e-4. With one 1×1 layer it trains; adding ``fc7_1`` (1×1, 1024, the
same initialisers) makes "the loss stick at 1" — ln 3 = 1.0986 for 3 classes.

This script trains both on three digit classes and measures the mechanism: at init every
head layer multiplies the input-dependent part of its input by std·√fan_in ≈ 0.1–0.2 and
then adds the constant 0.1, so after fc6/fc7 (/fc7_1) the activations are ≈ 0.1 for every
image and the logits hardly depend on the input (their spread across the batch is
measured per layer). The fixes (He init, BatchNorm, zero bias) and the seed's three source
bugs (behind flags; faithful vs corrected) are run too.

    python experiments/overfeat_1x1.py [--quick] [--full] [--out DIR]

Data: the embedded real dataset ``vggjax_digits`` (scikit-learn's 8×8 handwritten digits)
restricted to classes 0, 1, 2, resized to 60×60 and repeated to 3 channels by the
library pipeline (``vggjax.data.load``). Default size is reduced for 2 CPU cores (see
``settings`` in result.json); ``--full`` uses the seed's widths.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vggjax import optim
from vggjax.models.reference import OverFeatSlim
from vggjax.train import make_train_step, merge, split_model, state_from_model

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "overfeat_1x1")
LN3 = math.log(3.0)
CLASSES = (0, 1, 2)
WEIGHT_DECAY = 5e-4  # overfeat_arg_scope()'s default; slim's l2_regularizer on weights only
HEAD_STD = 0.005  # trunc_normal(0.005) of fc6/fc7 (and fc9, which sits in the same arg_scope)
WINDOW = 16  # moving-average window (steps) for "left the plateau" and final losses

# name -> options; "two" = the seed's fc7_1 variant. The default optimizer is SGD (the
# gradient-proportional family of the seed's likely Adagrad); "/adam" runs use AdamW.
RUNS: dict[str, dict] = {
    "one_1x1": {"extra_1x1": 0},
    "two_1x1": {"extra_1x1": 1},
    "two_1x1+he_init": {"extra_1x1": 1, "init": "he"},
    "two_1x1+batch_norm": {"extra_1x1": 1, "batch_norm": True},
    "two_1x1+zero_bias": {"extra_1x1": 1, "bias": "zeros"},
    "two_1x1+he_init+zero_bias": {"extra_1x1": 1, "init": "he", "bias": "zeros"},
    "one_1x1+source_bugs": {"extra_1x1": 0, "bugs": True},
    "one_1x1/adam": {"extra_1x1": 0, "optimizer": "adam"},
    "two_1x1/adam": {"extra_1x1": 1, "optimizer": "adam"},
    "two_1x1/adam_l2": {"extra_1x1": 1, "optimizer": "adam_l2"},
}
QUICK_RUNS = ("two_1x1", "two_1x1+he_init")
# (width, batch, steps, probe images) per mode; head std is scaled so std·√fan_in matches width 1.
MODES = {"quick": (1 / 8, 16, 96, 32), "default": (1 / 8, 16, 128, 48), "full": (1.0, 32, 2000, 64)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="96 steps, two_1x1 and two_1x1+he_init only (the tests)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the seed's widths (width 1), batch 32, 2000 steps (GPU)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default per mode)"
    )
    p.add_argument("--runs", default=None, help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=("sgd", "adam", "adam_l2", "adagrad"),
        help="optimizer of runs that name none",
    )
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--sgd-lr", type=float, default=1e-2)
    p.add_argument("--adagrad-lr", type=float, default=0.1)
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="drop rate (1 - keep_prob); facenet's default keep_prob is 1.0",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: TFDS's)")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def versions() -> dict:
    import flax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
    }


# ----------------------------------------------------------------------------- data


def load_digits3(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All of ``split`` of vggjax_digits classes 0, 1, 2: 60×60×3 float32 images, int32 labels."""
    from vggjax.data import load

    kw = dict(global_batch_size=128, train=False, image_size=60, channels=3, data_dir=data_dir)
    try:
        ds, _ = load("vggjax_digits", split, classes=CLASSES, **kw)
        filter_here = False
    except TypeError:  # a pipeline without the classes option: filter below
        ds, _ = load("vggjax_digits", split, **kw)
        filter_here = True
    xs, ys = [], []
    for b in ds:
        xs.append(b["image"][b["mask"]])
        ys.append(b["label"][b["mask"]])
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    if filter_here:
        keep = np.isin(y, CLASSES)
        x, y = x[keep], np.searchsorted(CLASSES, y[keep]).astype(np.int32)
    return x, y


def batches(n: int, batch: int, seed: int):
    """Indices of shuffled mini-batches, reshuffled every epoch (drop the ragged tail)."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


# ----------------------------------------------------------------------------- model, optimizer


def build_model(spec: dict, width: float, dropout: float, seed: int) -> OverFeatSlim:
    """OverFeatSlim with the seed's initialisers and ``spec``'s changes.

    The head std is scaled by 1/√width to keep std·√fan_in.
    """
    std = HEAD_STD / math.sqrt(width)
    init = {
        "fc6": f"trunc_normal({std:.6g})",
        "fc7*": f"trunc_normal({std:.6g})",
        "fc9": f"trunc_normal({std:.6g})",
        "*": "xavier_uniform",
    }
    if spec.get("init") == "he":
        init.update({"fc6": "he_normal(fan_in)", "fc7*": "he_normal(fan_in)"})
    bias = {"*": "zeros"} if spec.get("bias") == "zeros" else None  # None: fc6/fc7* 0.1, others 0
    bugs = bool(spec.get("bugs"))
    return OverFeatSlim(
        len(CLASSES),
        extra_1x1=spec["extra_1x1"],
        batch_norm=bool(spec.get("batch_norm")),
        dropout=dropout,
        conv12_reads_input=bugs,
        pool_in_train_only=bugs,
        dropout_on_logits=bugs,
        width=width,
        init=init,
        bias_init=bias,
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )


def make_tx(name: str, lr: float) -> optax.GradientTransformation:
    """Weight decay 5e-4 on conv kernels only (slim's weights_regularizer) with SGD or Adam.

    "sgd": SGD momentum 0.9 with coupled L2 (the slim regulariser's gradient ``wd·w``).
    "adam": Adam with the decay decoupled (AdamW: ``w -= lr·wd·w``). "adam_l2": Adam with
    the coupled L2 - when the loss gradients vanish, Adam's normalisation turns the ``wd·w``
    term into a full-``lr`` pull towards zero on every kernel.
    """
    decay = {"weight_decay": WEIGHT_DECAY, "weight_decay_mask": "no_bias_norm"}
    if name == "sgd":
        return optim.make_optimizer(
            {"learning_rate": lr, "momentum": 0.9, **decay}, steps_per_epoch=1, total_steps=1
        )
    if (
        name == "adagrad"
    ):  # tf.train.AdagradOptimizer(lr, initial_accumulator_value=0.1), facenet's default
        return optax.chain(
            optax.add_decayed_weights(
                WEIGHT_DECAY, mask=lambda p: optim.decay_mask(p, "no_bias_norm")
            ),
            optax.scale_by_rss(initial_accumulator_value=0.1),
            optim.make_optimizer({"learning_rate": lr}, steps_per_epoch=1, total_steps=1),
        )
    if name == "adam_l2":
        return optax.chain(
            optax.add_decayed_weights(
                WEIGHT_DECAY, mask=lambda p: optim.decay_mask(p, "no_bias_norm")
            ),
            optax.scale_by_adam(),
            optim.make_optimizer({"learning_rate": lr}, steps_per_epoch=1, total_steps=1),
        )
    return optax.chain(
        optax.scale_by_adam(),
        optim.make_optimizer(
            {"learning_rate": lr, "weight_decay_mode": "decoupled", **decay},
            steps_per_epoch=1,
            total_steps=1,
        ),
    )


# ----------------------------------------------------------------------------- measurements


def make_probe(graphdef):
    """Jitted ``(state, images) -> stats``: how much each layer's output depends on the input.

    Per ReLU output / pooled features: ``mean`` (over everything), ``std`` (over
    everything), ``between`` (std across the batch of the per-image spatial mean, averaged
    over channels) and ``ratio`` = between / |mean|. Logits (spatially averaged if the
    network returns a map): ``logit_between`` and ``logit_abs_mean``. Dropout off;
    BatchNorm on batch statistics, as in training.
    """

    def probe(state, images):
        model = merge(graphdef, state)
        logits, feats = model(images, return_features=True)
        out = collections.OrderedDict()
        for name, x in feats.items():
            if not (name.startswith("relu") or name == "avgpool"):
                continue
            x = x.astype(jnp.float32)
            per_image = jnp.mean(x, axis=(1, 2))
            mean = jnp.mean(x)
            between = jnp.mean(jnp.std(per_image, axis=0))
            out[name] = {
                "mean": mean,
                "std": jnp.std(x),
                "between": between,
                "ratio": between / jnp.abs(mean),
            }
        if logits.ndim == 4:
            logits = jnp.mean(logits, axis=(1, 2))
        out["logits"] = {
            "between": jnp.mean(jnp.std(logits, axis=0)),
            "abs_mean": jnp.mean(jnp.abs(logits)),
        }
        return out

    return jax.jit(probe)


def evaluate(eval_graphdef, state, x: np.ndarray, y: np.ndarray) -> dict:
    """Test loss / accuracy in eval mode; with ``pool_in_train_only`` the output is a score map."""
    logits = np.asarray(jax.jit(lambda s, im: merge(eval_graphdef, s)(im))(state, jnp.asarray(x)))
    out = {"output_shape": list(logits.shape)}
    if logits.ndim == 4:  # the source bug: no pooling at eval; a (N, h, w, 3) map meets (N,) labels
        out["accuracy_per_position"] = float(np.mean(logits.argmax(-1) == y[:, None, None]))
        logits = logits.mean(axis=(1, 2))  # = the pooled logits, fc9 being linear
    logp = (
        logits
        - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    out["loss"] = float(-np.mean(logp[np.arange(len(y)), y]))
    out["accuracy"] = float(np.mean(logits.argmax(-1) == y))
    return out


def _host(tree) -> dict:
    return jax.tree.map(float, jax.device_get(tree))


def moving_average(v: np.ndarray, k: int = WINDOW) -> np.ndarray:
    c = np.cumsum(np.insert(v, 0, 0.0))
    return (c[k:] - c[:-k]) / k


def plateau_exit(losses: np.ndarray, threshold: float = 0.95 * LN3) -> int | None:
    """First step whose trailing WINDOW-step mean loss is below ``threshold`` (None: never)."""
    ma = moving_average(losses)
    below = np.flatnonzero(ma < threshold)
    return int(below[0] + WINDOW - 1) if below.size else None


def run_one(
    name: str, spec: dict, args, data: dict, width: float, batch: int, steps: int, probe_n: int
) -> dict:
    t0 = time.time()
    opt_name = spec.get("optimizer", args.optimizer)
    lr = {"sgd": args.sgd_lr, "adagrad": args.adagrad_lr}.get(opt_name, args.adam_lr)
    tx = make_tx(opt_name, lr)
    model = build_model(spec, width, args.dropout, args.seed)
    graphdef, eval_graphdef, state = state_from_model(model, tx)
    model.set_attributes(deterministic=True)  # dropout off, BN still on batch statistics
    probe = make_probe(split_model(model)[0])
    step = jax.jit(
        make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True),
        donate_argnums=0,
    )
    xtr, ytr = data["train"]
    probe_x = jnp.asarray(xtr[:probe_n])
    record_every = max(1, steps // 8)

    init_probe = _host(probe(state, probe_x))
    losses, trace = [], []
    step0 = None
    for i, idx in zip(range(steps), batches(len(xtr), batch, args.seed)):
        state, m = step(state, {"image": jnp.asarray(xtr[idx]), "label": jnp.asarray(ytr[idx])})
        losses.append(m["loss"])
        if i == 0:
            step0 = {
                k: float(v)
                for k, v in jax.device_get(m).items()
                if k.startswith(("grad_norm/", "zero_frac/relu", "dead_frac/"))
            }
        if (i + 1) % record_every == 0 or i + 1 == steps:
            p = _host(probe(state, probe_x))
            trace.append(
                {
                    "step": i + 1,
                    "logit_between": p["logits"]["between"],
                    "last_hidden_ratio": p[_last_hidden(p)]["ratio"],
                }
            )
    losses = np.asarray(jax.device_get(losses), np.float64)
    final_probe = _host(probe(state, probe_x))
    test = evaluate(eval_graphdef, state, *data["test"])
    ma = moving_average(losses)
    return {
        "options": spec,
        "optimizer": opt_name,
        "learning_rate": lr,
        "loss": [round(float(v), 6) for v in losses],
        "initial_loss": float(losses[0]),
        "final_loss_ma": float(ma[-1]),
        "min_loss_ma": float(ma.min()),
        "max_abs_ma_minus_ln3": float(np.max(np.abs(ma - LN3))),
        "plateau_exit_step": plateau_exit(losses),
        "test": test,
        "init_probe": init_probe,
        "final_probe": final_probe,
        "trace": trace,
        "step0": step0,
        "seconds": round(time.time() - t0, 1),
    }


def _last_hidden(probe: dict) -> str:
    return [k for k in probe if k.startswith("relu")][-1]


def init_probes(width: float, probe_x: np.ndarray, seed: int) -> dict:
    """Init-time probe (forward passes only) of the one- and two-1×1 nets at ``width``."""
    from vggjax.train import TrainState

    out = {}
    for name in ("one_1x1", "two_1x1"):
        model = build_model(RUNS[name], width, 0.0, seed)
        model.set_attributes(deterministic=True)
        graphdef, params, frozen, batch_stats, rngs = split_model(model)
        state = TrainState(jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, None)
        out[name] = _host(make_probe(graphdef)(state, jnp.asarray(probe_x)))
    return out


# ----------------------------------------------------------------------------- plots


def plot(result: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    files = []
    base = [n for n in ("one_1x1", "two_1x1") if n in runs]
    groups = [
        (
            "SGD: one vs two 1x1, and the fixes",
            [n for n in runs if "/" not in n and "source_bugs" not in n],
        ),
        (
            "source bugs (faithful) vs corrected, SGD",
            base[:1] + [n for n in runs if "source_bugs" in n],
        ),
        ("Adam (decoupled decay = AdamW) and Adam + L2", [n for n in runs if "/" in n]),
    ]
    groups = [(t, g) for t, g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.3), squeeze=False)
    for ax, (title, names) in zip(axes[0], groups):
        for n in names:
            ma = moving_average(np.asarray(runs[n]["loss"]))
            ax.plot(np.arange(WINDOW - 1, WINDOW - 1 + len(ma)), ma, label=n)
        ax.axhline(LN3, color="grey", ls=":", lw=1, label="ln 3")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"train loss ({WINDOW}-step mean)")
        ax.set_ylim(0, 1.35)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_curves.png"), dpi=90)
    plt.close(fig)
    files.append("loss_curves.png")

    # Per-layer input dependence at init: between-image std / mean.
    fig, ax = plt.subplots(figsize=(8, 4.3))
    series = [
        (f"{n} (width {result['settings']['width']:g})", p)
        for n, p in result["init_probe"]["run_size"].items()
    ]
    series += [
        (f"{n} (run size)", runs[n]["init_probe"])
        for n in ("two_1x1+he_init", "two_1x1+batch_norm")
        if n in runs
    ]
    series += [
        (f"{n} (seed size, width 1)", p)
        for n, p in result["init_probe"].get("seed_size", {}).items()
    ]
    longest = max((([k for k in p if k != "logits"]) for _, p in series), key=len)
    for label, p in series:
        names = [k for k in p if k != "logits"]
        ax.plot(
            [longest.index(k) for k in names],
            [p[k]["ratio"] for k in names],
            marker="o",
            label=label,
            ls="--" if "seed size" in label else "-",
        )
    ax.set_xticks(range(len(longest)))
    ax.set_xticklabels(longest, rotation=45, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("std across images / |mean|")
    ax.set_title("how much each layer's output depends on the input, at init", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "init_input_dependence.png"), dpi=90)
    plt.close(fig)
    files.append("init_input_dependence.png")

    fig, ax = plt.subplots(figsize=(7, 4.3))
    for n, r in runs.items():
        steps = [0] + [t["step"] for t in r["trace"]]
        vals = [r["init_probe"]["logits"]["between"]] + [t["logit_between"] for t in r["trace"]]
        ax.plot(steps, vals, marker="o", ms=3, label=n, ls="--" if "/" in n else "-")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("std of the logits across images")
    ax.set_title("do the logits depend on the input? (probe batch, dropout off)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "logit_spread.png"), dpi=90)
    plt.close(fig)
    files.append("logit_spread.png")
    return files


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    mode = "quick" if args.quick else ("full" if args.full else "default")
    width, batch, steps, probe_n = MODES[mode]
    steps = args.steps or steps
    names = args.runs.split(",") if args.runs else (list(QUICK_RUNS) if args.quick else list(RUNS))
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {list(RUNS)}")
    os.makedirs(args.out, exist_ok=True)

    data = {
        "train": load_digits3("train", args.data_dir),
        "test": load_digits3("test", args.data_dir),
    }
    print(
        f"data: train {data['train'][0].shape} test {data['test'][0].shape} "
        f"({time.time() - t0:.0f}s)",
        flush=True,
    )

    runs = {}
    for name in names:
        runs[name] = r = run_one(name, RUNS[name], args, data, width, batch, steps, probe_n)
        print(
            f"{name:>28s}: loss {r['initial_loss']:.4f} -> {r['final_loss_ma']:.4f} (ma{WINDOW}), "
            f"exit {r['plateau_exit_step']}, test acc {r['test']['accuracy']:.3f}, "
            f"{r['seconds']}s",
            flush=True,
        )

    result: dict = {
        "experiment": "overfeat_1x1",
        "claim": "seed 003: adding a second 1x1 conv (fc7_1) to slim-OverFeat's head makes the "
        "loss stick near ln 3",
        "command": " ".join(
            ["experiments/overfeat_1x1.py"] + (sys.argv[1:] if argv is None else list(argv))
        ),
        "settings": {
            "mode": mode,
            "width": width,
            "batch_size": batch,
            "steps": steps,
            "seed": args.seed,
            "head_init": f"trunc_normal({HEAD_STD}/sqrt(width)) = "
            f"{HEAD_STD / math.sqrt(width):.6g} for fc6, fc7*, fc9 "
            "(keeps std*sqrt(fan_in), each layer's gain, equal to the seed-size net's); "
            "bias 0.1 on fc6/fc7*, 0 elsewhere; other convs xavier_uniform, bias 0",
            "reduced_size": None
            if mode == "full"
            else f"width {width} (channels x{width}) to fit 2 CPU cores; --full for width 1",
            "optimizer": {
                "default": args.optimizer,
                "adam_lr": args.adam_lr,
                "sgd_lr": args.sgd_lr,
                "sgd_momentum": 0.9,
                "weight_decay": f"{WEIGHT_DECAY} coupled (L2 in the gradient), conv kernels "
                "only (slim weights_regularizer)",
                "why": "the seed states no optimizer; its inference() wrapper is facenet's, "
                "whose train_softmax.py defaults to Adagrad(lr 0.1, initial accumulator 0.1) "
                "with keep_probability 1.0 - with gradients this small Adagrad is plain SGD "
                "at lr ~0.3 (step = lr*g/sqrt(0.1 + sum g^2)). So the main runs use SGD "
                "(momentum 0.9, lr --sgd-lr); '/adam' runs use Adam with decoupled decay "
                "(AdamW), '/adam_l2' Adam with the slim-style coupled L2, to show how much "
                "the optimizer matters",
            },
            "dropout_rate": args.dropout,
            "source_bugs_runs": "conv12_reads_input, pool_in_train_only, dropout_on_logits "
            "all True (faithful); other runs corrected. "
            "With dropout rate 0 (keep_prob 1.0) dropout_on_logits changes nothing",
            "data": "vggjax_digits (scikit-learn's real 8x8 handwritten digits, embedded) "
            "classes 0,1,2 via vggjax.data.load"
            f"(classes=(0,1,2), image_size=60, channels=3): train {len(data['train'][1])} images "
            f"{np.bincount(data['train'][1]).tolist()}, test {len(data['test'][1])}",
            "plateau_exit": f"first step whose trailing {WINDOW}-step mean train loss < 0.95 ln 3",
            "probe": f"first {probe_n} training images; 'ratio' = std across images of a "
            "layer's per-image mean output / |mean|",
        },
        "runs": runs,
        "versions": versions(),
    }
    probe_x = data["train"][0][:probe_n]
    result["init_probe"] = {"run_size": init_probes(width, probe_x, args.seed)}
    if mode == "default":
        result["init_probe"]["seed_size"] = init_probes(1.0, probe_x[:32], args.seed)
    headline = {"ln3": LN3}
    for size, probes in result["init_probe"].items():
        for n, p in probes.items():
            headline[f"init_{size}_{n}_logit_std_across_images"] = p["logits"]["between"]
            headline[f"init_{size}_{n}_last_hidden_ratio"] = p[_last_hidden(p)]["ratio"]
    for n, r in runs.items():
        headline[f"{n}_final_loss_ma"] = r["final_loss_ma"]
        headline[f"{n}_max_abs_ma_minus_ln3"] = r["max_abs_ma_minus_ln3"]
        headline[f"{n}_plateau_exit"] = r["plateau_exit_step"]
    result["headline"] = headline
    if not args.no_plots:
        result["plots"] = plot(result, args.out)
    result["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"headline": result.get("headline"), "seconds": result["seconds"]}, indent=1))
    return result


if __name__ == "__main__":
    main()
