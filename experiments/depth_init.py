"""Initialisation of deep plain VGG nets: the VGG paper's own problem, and He et al. 2015.

Simonyan & Zisserman (arXiv 1409.1556, §3.1) drew config A's weights "from a normal
distribution with the zero mean and 10^-2 variance" with zero biases and initialised the
deeper configs from A, because bad initialisation "can stall learning due to the
instability of gradient in deep nets"; after submission they found Glorot (Xavier)
initialisation works without pre-training. Variance 10^-2 is std 0.1, while most
reimplementations use std 0.01: the two fail in opposite directions. He et al. (arXiv
1502.01852, §2.3) add that a 22-layer plain net converges with Xavier and with their
initialisation, but a 30-layer one stalls with Xavier ("the gradients are diminishing").

Part 1 (full width): per-layer kernel gradient norms and activation stds at
initialisation of VGG-11/13/16/19 (no BatchNorm, torchvision's fc head with its adaptive
7×7 average pool, dropout off) under N(0, 0.01²), N(0, 0.1²), Xavier (Glorot uniform) and
He (kaiming normal, fan_in), all with zero biases, on one batch of the embedded digits
(8×8 upsampled, grey replicated to 3 channels), 10 classes; plus plain VGG-style nets of
22 and 30 weight layers (19 / 27 3×3 convs in five stages + the three fc layers, counted
as He et al. count) under Xavier and He. Part 2 (reduced width): the same nets trained on
the embedded digits with SGD + momentum, several seeds, mean ± std.

    python experiments/depth_init.py [--quick] [--full] [--out DIR]

Everything goes through the library: ``vggjax.VGG`` / ``vggjax.build`` for the nets,
``vggjax.initializers.apply`` for the inits, ``vggjax.train.make_train_step(...,
with_diagnostics=True)`` for the gradients, ``vggjax.diagnostics`` for the statistics.
"""

from __future__ import annotations

import argparse
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

import vggjax
from vggjax import diagnostics, initializers, optim
from vggjax.data import load
from vggjax.models.vgg import CFGS, VGG
from vggjax.train import make_eval_step, make_train_step, state_from_model

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "depth_init")
LN10 = math.log(10.0)

# spec -> label. Biases are zero for every scheme (the paper's "biases were initialised with zero").
INITS: dict[str, str] = {
    "normal(0.01)": "N(0, 0.01²) (usual reimplementation)",
    "normal(0.1)": "N(0, 0.1²) (paper: variance 1e-2)",
    "xavier_uniform": "Xavier (Glorot uniform)",
    "he_normal": "He (kaiming normal, fan_in)",
}
COLORS = {
    "normal(0.01)": "tab:blue",
    "normal(0.1)": "tab:red",
    "xavier_uniform": "tab:orange",
    "he_normal": "tab:green",
}

# Plain VGG-style nets: five stages of 3×3 convs + the fc head; "depth" counts the weight
# layers (convs + 3 fc), as He et al. do (VGG-16 = 13 convs + 3 fc).
PLAIN: dict[str, list] = {
    "plain22": [64, 64, "M", 128, 128, "M"]
    + [256] * 5
    + ["M"]
    + [512] * 5
    + ["M"]
    + [512] * 5
    + ["M"],
    "plain30": [64] * 3
    + ["M"]
    + [128] * 3
    + ["M"]
    + [256] * 7
    + ["M"]
    + [512] * 7
    + ["M"]
    + [512] * 7
    + ["M"],
}
VGGS = ("vgg11", "vgg13", "vgg16", "vgg19")
ARCH_CFG = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
PLAIN_INITS = ("xavier_uniform", "he_normal")


def depth(arch: str) -> int:
    cfg = CFGS[ARCH_CFG[arch]] if arch in ARCH_CFG else PLAIN[arch]
    return sum(v != "M" for v in cfg) + 3


def make_model(arch: str, **kw) -> VGG:
    if arch in PLAIN:
        return VGG(list(PLAIN[arch]), name=arch, **kw)
    return vggjax.build(arch, **kw)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="VGG-16 gradients only, N(0,0.01) vs He, 32x32 (for the tests)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="224x224 gradients; training at width 0.25, 4 seeds, 600 steps (hours on 2 CPU cores)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument(
        "--grad-size",
        type=int,
        default=None,
        help="input size of the full-width gradient measurement (default 64)",
    )
    p.add_argument("--grad-batch", type=int, default=None, help="images in that batch (default 2)")
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="channel multiplier of the trained nets (default 0.125)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="SGD steps per training run (default 150)"
    )
    p.add_argument(
        "--batch", type=int, default=16, help="training batch size (default %(default)s)"
    )
    p.add_argument(
        "--lr", type=float, default=0.005, help="SGD learning rate (default %(default)s)"
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="fc-head dropout while training (default 0: VGG's 0.5 slows every init's start alike)",
    )
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--archs", default=None, help="comma-separated nets to train (default: all six)")
    p.add_argument(
        "--inits", default=None, help="comma-separated inits to train (default: all that apply)"
    )
    p.add_argument(
        "--literal-std",
        action="store_true",
        help="train with std 0.01 / 0.1 as written instead of scaling them by 1/sqrt(width)",
    )
    p.add_argument(
        "--no-train", action="store_true", help="only the full-width gradient measurement"
    )
    p.add_argument("--no-grads", action="store_true", help="only the training runs")
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
        "cpu_count": os.cpu_count(),
    }


# --------------------------------------------------------------------------- helpers


def kernel_grad_norms(metrics, order: list[str]) -> list[float]:
    stats = {
        k: v for k, v in metrics.items() if k.startswith("grad_norm/") and k.endswith("/kernel")
    }
    return [v for _, v in diagnostics.by_layer(stats, "grad_norm", leaves=True, order=order)]


def conv_act_std(metrics) -> list[tuple[str, float]]:
    """Std of every conv / fc *output* (pre-ReLU), in network order (VGG feats names sort correctly)."""
    items = diagnostics.by_layer(
        {k: v for k, v in metrics.items() if k.startswith("act_std/")}, "act_std"
    )
    return [(n, v) for n, v in items if n.startswith("conv") or n in ("fc6", "fc7", "fc8")]


def load_arrays(
    split: str, size: int, channels: int, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The whole ``split`` of the embedded digits as NHWC float32 (dataset normalisation) + int labels."""
    batches, _ = load(
        "vggjax_digits",
        split,
        global_batch_size=256,
        train=False,
        image_size=size,
        channels=channels,
        augment="none",
    )
    xs, ys = [], []
    for b in batches:
        xs.append(b["image"][b["mask"]])
        ys.append(b["label"][b["mask"]])
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    return (x, y) if n is None else (x[:n], y[:n])


# --------------------------------------------------------------------------- part 1


def grads_at_init(
    archs_inits: list[tuple[str, str]],
    size: int,
    batch: int,
    head_options: dict | None,
    seed: int = 0,
) -> dict:
    """Per-layer kernel gradient norms + activation stds at init, full width, one batch."""
    x, y = load_arrays("train", size, 3, batch)
    b = {"image": jnp.asarray(x), "label": jnp.asarray(y), "mask": jnp.ones((len(y),), bool)}
    tx = optim.make_optimizer({"learning_rate": 0.0}, 1, 1)  # lr 0: the step only measures
    out: dict = {}
    compiled: dict = {}
    for arch, init in archs_inits:
        t0 = time.perf_counter()
        # Built abstractly, then every conv/linear drawn once by the library's init: no
        # wasted default draw of the 100M-parameter fc6.
        model = nnx.eval_shape(
            lambda: make_model(
                arch,
                num_classes=10,
                head="fc",
                head_options=head_options,
                init="zeros",
                bias_init="zeros",
                dropout=0.0,
                in_channels=3,
            )
        )
        initializers.apply(model, init, "zeros", rngs=nnx.Rngs(seed))
        graphdef, _, state = state_from_model(model, tx)
        n_params = int(sum(v.size for v in jax.tree.leaves(state.params)))
        jax.block_until_ready(state.params)
        t_init = time.perf_counter() - t0
        t0 = time.perf_counter()
        if arch not in compiled:
            order = diagnostics.kernel_order(model, jax.ShapeDtypeStruct(x.shape, jnp.float32))
            step = jax.jit(
                make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True)
            )
            compiled[arch] = (step.lower(state, b).compile(), order)
        step, order = compiled[arch]
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, m = step(state, b)
        m = diagnostics.to_python(m)
        t_step = time.perf_counter() - t0
        del state, model
        norms = kernel_grad_norms(m, order)
        acts = conv_act_std(m)
        out.setdefault(arch, {})[init] = {
            "layers": [p[: -len("/kernel")] for p in order],
            "grad_norm": norms,
            "act_std_layers": [n for n, _ in acts],
            "act_std": [v for _, v in acts],
            "loss": m["loss"],
            "global_grad_norm": m["global_grad_norm"],
            "params": n_params,
            "seconds": {
                "init": round(t_init, 2),
                "compile": round(t_compile, 2),
                "step": round(t_step, 2),
            },
        }
        print(
            f"[grads] {arch:8s} {init:15s} loss {m['loss']:.3g}  |g| first {norms[0]:.3g} last {norms[-1]:.3g}  "
            f"(init {t_init:.1f}s, compile {t_compile:.1f}s, step {t_step:.1f}s)",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- part 2


def training_spec(init: str, width: float, literal: bool) -> str:
    """The init actually used at reduced width.

    A fixed std σ gives a conv layer the forward gain fan_in·σ²/2 per ReLU layer, and
    fan_in shrinks with the width: at width 1/8, N(0, 0.1²) *vanishes* in the narrow
    layers instead of exploding. Scaling σ by 1/√width keeps every hidden conv's
    fan_in·σ² (hence the failure mode) that of the full-width net. Xavier and He scale
    with the fan by construction and are used as they are.
    """
    if literal or not init.startswith("normal("):
        return init
    std = float(init[len("normal(") : -1])
    return f"normal({std / math.sqrt(width):.4g})"


def train_runs(archs: list[str], seeds: list[int], steps: int, args, data) -> dict:
    """Train every (arch, init, seed) at reduced width; loss curve, test accuracy, grads at step 1."""
    xtr, ytr, xte, yte = data
    test = {
        "image": jnp.asarray(xte),
        "label": jnp.asarray(yte),
        "mask": jnp.ones((len(yte),), bool),
    }
    tx = optim.make_optimizer({"learning_rate": args.lr, "momentum": args.momentum}, 1, steps)
    out: dict = {}
    for arch in archs:
        inits = list(INITS) if arch in ARCH_CFG else list(PLAIN_INITS)
        if args.inits:
            inits = [i for i in inits if i in args.inits.split(",")]
        step = evaluate = order = None
        for init in inits:
            for seed in seeds:
                t0 = time.perf_counter()
                spec = training_spec(init, args.width, args.literal_std)
                model = make_model(
                    arch,
                    num_classes=10,
                    head="fc",
                    head_options={"pool_size": 1},
                    init=spec,
                    bias_init="zeros",
                    width=args.width,
                    in_channels=1,
                    dropout=args.dropout,
                    rngs=nnx.Rngs(params=seed, dropout=seed + 1),
                )
                graphdef, eval_graphdef, state = state_from_model(model, tx)
                if step is None:
                    order = diagnostics.kernel_order(
                        model, jax.ShapeDtypeStruct((args.batch,) + xtr.shape[1:], jnp.float32)
                    )
                    step = jax.jit(
                        make_train_step(
                            graphdef, tx, "softmax_cross_entropy", with_diagnostics=True
                        ),
                        donate_argnums=0,
                    )
                    evaluate = jax.jit(make_eval_step(eval_graphdef, "softmax_cross_entropy"))
                rng = np.random.RandomState(seed)
                perm, pos = rng.permutation(len(ytr)), 0
                pending, losses, accs, first, diverged = [], [], [], None, None
                for i in range(1, steps + 1):
                    if pos + args.batch > len(perm):  # reshuffle every epoch, drop the remainder
                        perm, pos = rng.permutation(len(ytr)), 0
                    idx = perm[pos : pos + args.batch]
                    pos += args.batch
                    state, m = step(
                        state,
                        {"image": xtr[idx], "label": ytr[idx], "mask": np.ones(len(idx), bool)},
                    )
                    if i == 1:
                        first = diagnostics.to_python(m)
                    pending.append((m["loss"], m["accuracy"]))
                    if i % 10 == 0 or i == steps:
                        host = jax.device_get(pending)
                        pending = []
                        losses += [float(a) for a, _ in host]
                        accs += [float(b) for _, b in host]
                        bad = [j for j, v in enumerate(losses) if not math.isfinite(v)]
                        if bad:
                            diverged = bad[0] + 1
                            break
                ev = jax.device_get(evaluate(state, test)) if diverged is None else None
                rec = {
                    "init_spec": spec,
                    "train_loss": losses,
                    "train_acc": accs,
                    "steps_run": len(losses),
                    "diverged_at_step": diverged,
                    "test_accuracy": float(ev["correct"] / ev["count"]) if ev is not None else None,
                    "test_loss": float(ev["loss_sum"] / ev["count"]) if ev is not None else None,
                    "step1_loss": first["loss"],
                    "step1_grad_norm": kernel_grad_norms(first, order),
                    "step1_global_grad_norm": first["global_grad_norm"],
                    "step1_act_std": [v for _, v in conv_act_std(first)],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                out.setdefault(arch, {}).setdefault(init, {})[str(seed)] = rec
                acc = (
                    "diverged (non-finite loss at step %d)" % diverged
                    if diverged
                    else f"test acc {rec['test_accuracy']:.3f}"
                )
                print(
                    f"[train] {arch:8s} {init:15s} seed {seed}: final loss {np.mean(losses[-10:]):.3g}, {acc} "
                    f"({rec['seconds']}s)",
                    flush=True,
                )
        out[arch]["layers"] = [p[: -len("/kernel")] for p in order]
    return out


def summarize(train: dict) -> dict:
    """mean ± std over seeds of test accuracy and final training loss (mean of the last 10 steps)."""
    table = {}
    for arch, per_init in train.items():
        for init, runs in per_init.items():
            if init == "layers":
                continue
            recs = list(runs.values())
            accs = [r["test_accuracy"] for r in recs if r["test_accuracy"] is not None]
            finals = [
                float(np.mean(r["train_loss"][-10:])) for r in recs if r["diverged_at_step"] is None
            ]
            table.setdefault(arch, {})[init] = {
                "seeds": len(recs),
                "diverged": sum(r["diverged_at_step"] is not None for r in recs),
                "diverged_at_steps": [
                    r["diverged_at_step"] for r in recs if r["diverged_at_step"] is not None
                ],
                "test_acc_mean": float(np.mean(accs)) if accs else None,
                "test_acc_std": float(np.std(accs)) if accs else None,
                "final_loss_mean": float(np.mean(finals)) if finals else None,
                "final_loss_std": float(np.std(finals)) if finals else None,
                "step1_first_layer_grad_mean": float(
                    np.mean([r["step1_grad_norm"][0] for r in recs])
                ),
            }
    return table


# --------------------------------------------------------------------------- plots


def plot_grads(grads: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(grads)
    cols = min(3, len(archs))
    rows = math.ceil(len(archs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, arch in zip(axes.flat, archs):
        for init, rec in grads[arch].items():
            g = np.maximum(np.asarray(rec["grad_norm"]), 1e-30)
            ax.semilogy(
                np.arange(1, len(g) + 1), g, "o-", ms=3, color=COLORS[init], label=INITS[init]
            )
        n = len(next(iter(grads[arch].values()))["grad_norm"])
        ax.axvline(n - 2.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{arch} ({depth(arch)} weight layers)")
        ax.set_xlabel("weight layer (1 = conv1_1; last 3 = fc6-8)")
        ax.set_ylabel("‖∂L/∂W‖ at init")
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(archs) :]:
        ax.axis("off")
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acts(grads: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in ("vgg16", "plain30") if a in grads] or list(grads)[:1]
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes.flat, archs):
        for init, rec in grads[arch].items():
            a = np.maximum(np.asarray(rec["act_std"]), 1e-30)
            ax.semilogy(
                np.arange(1, len(a) + 1), a, "o-", ms=3, color=COLORS[init], label=INITS[init]
            )
        ax.set_title(f"{arch}: forward signal at init")
        ax.set_xlabel("weight layer (output, before ReLU)")
        ax.set_ylabel("std of the layer's output")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def short_label(init: str, runs: dict) -> str:
    spec = next(iter(runs.values()))["init_spec"]
    if spec.startswith("normal("):
        return f"N(0, {spec[len('normal(') : -1]}²)"
    return INITS[init].split(" (")[0]


def plot_training(train: dict, table: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(train)
    cols = min(3, len(archs))
    rows = math.ceil(len(archs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, arch in zip(axes.flat, archs):
        for init, runs in train[arch].items():
            if init == "layers":
                continue
            curves = [r["train_loss"] for r in runs.values() if r["diverged_at_step"] is None]
            t = table[arch][init]
            if not curves:
                steps = t["diverged_at_steps"]
                span = f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"
                ax.plot(
                    [],
                    [],
                    color=COLORS[init],
                    label=f"{short_label(init, runs)}: non-finite at step {span}",
                )
                continue
            n = min(len(c) for c in curves)
            c = np.asarray([cc[:n] for cc in curves])
            k = 10  # moving average over 10 steps
            sm = np.asarray([np.convolve(row, np.ones(k) / k, mode="valid") for row in c])
            xs = np.arange(k, n + 1)
            mu, sd = sm.mean(0), sm.std(0)
            lab = f"{short_label(init, runs)}: acc {t['test_acc_mean']:.2f}±{t['test_acc_std']:.2f}"
            ax.plot(xs, mu, color=COLORS[init], label=lab)
            ax.fill_between(xs, mu - sd, mu + sd, color=COLORS[init], alpha=0.2)
        ax.axhline(LN10, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, 3.0)
        ax.set_xlim(0, None)
        ax.set_title(f"{arch} ({depth(arch)} layers)")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("train loss (10-step mean)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(archs) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.quick:
        size, gbatch, head_opts = args.grad_size or 32, args.grad_batch or 2, {"pool_size": 1}
        pairs = [("vgg16", "normal(0.01)"), ("vgg16", "he_normal")]
    else:
        size = args.grad_size or (224 if args.full else 64)
        gbatch = args.grad_batch or 2
        head_opts = None  # torchvision's head: adaptive avg-pool to 7x7, fc6 25088 -> 4096
        pairs = [(a, i) for a in VGGS for i in INITS] + [(a, i) for a in PLAIN for i in PLAIN_INITS]
    grads, checks = {}, {}
    if not args.no_grads:
        grads = grads_at_init(pairs, size, gbatch, head_opts)
        g16 = grads["vgg16"]
        ratio = g16["he_normal"]["grad_norm"][0] / g16["normal(0.01)"]["grad_norm"][0]
        checks["vgg16_first_layer_grad_ratio_he_over_normal001"] = ratio
        print(f"VGG-16 first-layer gradient norm, He / N(0,0.01): {ratio:.3g}", flush=True)

    train = table = None
    seeds = [int(s) for s in (args.seeds or ("0,1,2,3" if args.full else "0,1,2")).split(",")]
    steps = args.steps or (600 if args.full else 150)
    args.width = args.width or (0.25 if args.full else 0.125)
    if not args.quick and not args.no_train:
        archs = (args.archs or ",".join(VGGS + tuple(PLAIN))).split(",")
        xtr, ytr = load_arrays("train", 32, 1)
        xte, yte = load_arrays("test", 32, 1)
        train = train_runs(archs, seeds, steps, args, (xtr, ytr, xte, yte))
        table = summarize(train)

    result = {
        "experiment": "depth_init",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "data": {
            "dataset": "vggjax_digits (scikit-learn's 8x8 handwritten digits, embedded; 1,438 train / 359 test, "
            "10 classes) - CIFAR-10/ImageNet are not available offline",
            "gradient_batch": f"the first {gbatch} training images, upsampled to {size}x{size}, grey -> 3 channels",
            "training": "all training images at 32x32x1, reshuffled every epoch (remainder dropped); test split for accuracy",
        },
        "gradient_measurement": {
            "width": 1.0,
            "input_size": size,
            "batch": gbatch,
            "num_classes": 10,
            "head": "fc (torchvision: adaptive avg-pool 7x7, fc6 25088->4096, fc7, fc8)"
            if head_opts is None
            else f"fc with head_options={head_opts} (512->4096->4096->10)",
            "dropout": 0.0,
            "bias_init": "zeros",
            "seed": 0,
            "note": "grad_norm = L2 norm of dL/dW for each conv/fc kernel (mean softmax cross-entropy over the batch); "
            "act_std = std of each conv/fc output before its ReLU",
            "results": grads,
        },
        "checks": checks,
        "versions": versions(),
    }
    if train is not None:
        result["training"] = {
            "width": args.width,
            "image_size": 32,
            "in_channels": 1,
            "batch": args.batch,
            "steps": steps,
            "seeds": seeds,
            "optimizer": {"sgd_lr": args.lr, "momentum": args.momentum, "weight_decay": 0.0},
            "head": "fc with head_options={'pool_size': 1} (the 1x1 map of a 32x32 input, no 49x replication)",
            "dropout": args.dropout,
            "bias_init": "zeros",
            "note": "a run whose loss becomes non-finite stops there (diverged_at_step)",
            "table": table,
            "runs": train,
        }
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    plots = []
    if not args.no_plots and grads:
        where = f"{size}x{size}, batch {gbatch}, full width"
        plot_grads(
            grads,
            os.path.join(args.out, "grad_norms_init.png"),
            f"Per-layer kernel gradient norm at initialisation ({where}, zero biases)",
        )
        plots.append("grad_norms_init.png")
        plot_acts(
            grads,
            os.path.join(args.out, "activations_init.png"),
            f"Forward signal at initialisation ({where})",
        )
        plots.append("activations_init.png")
    if not args.no_plots and train is not None:
        if True:
            plot_training(
                train,
                table,
                os.path.join(args.out, "training.png"),
                f"Training at width {args.width} on embedded digits 32x32: mean ± std over seeds {seeds} "
                f"(SGD lr {args.lr}, momentum {args.momentum}, batch {args.batch}, dropout {args.dropout}); "
                + ("std as written" if args.literal_std else "fixed stds scaled by 1/√width"),
            )
            plots.append("training.png")
    result["plots"] = plots
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    if table:
        for arch, rows in table.items():
            for init, t in rows.items():
                acc = (
                    "-"
                    if t["test_acc_mean"] is None
                    else f"{t['test_acc_mean']:.3f}±{t['test_acc_std']:.3f}"
                )
                print(f"{arch:8s} {init:15s} acc {acc}  diverged {t['diverged']}/{t['seeds']}")
    print(json.dumps({"checks": checks, "seconds": result["seconds"], "out": args.out}))
    return result


if __name__ == "__main__":
    main()
