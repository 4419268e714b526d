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
``vggjax.initializers.apply`` for the inits, ``vggjax.training.make_train_step(...,
with_diagnostics=True)`` for the gradients, :func:`vggjax.experiment.train`
(:func:`vggjax.training.fit`) for the training runs, ``vggjax.diagnostics`` for the statistics.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import vggjax
from vggjax import diagnostics, experiment, initializers, optim
from vggjax.models.vgg import CFGS, VGG
from vggjax.training import make_eval_step, make_train_step, state_from_model

LN10 = math.log(10.0)
DATASET = "vggjax_digits"

# spec -> label. Biases are zero for every scheme (the paper's "biases were initialised with zero").
INITS: dict[str, str] = {
    "normal(0.01)": "N(0, 0.01²) (usual reimplementation)",
    "normal(0.1)": "N(0, 0.1²) (paper: variance 1e-2)",
    "xavier_uniform": "Xavier (Glorot uniform)",
    "he_normal": "He (kaiming normal, fan_in)",
}
COLORS = dict(zip(INITS, ("tab:blue", "tab:red", "tab:orange", "tab:green")))


def _stages(*convs: int) -> list:
    """VGG's five stages of 3×3 convs (64, 128, 256, 512, 512 channels), each closed by a pool."""
    return [v for n, c in zip(convs, (64, 128, 256, 512, 512)) for v in [c] * n + ["M"]]


# Plain VGG-style nets: "depth" counts the weight layers (convs + 3 fc), as He et al. do
# (VGG-16 = 13 convs + 3 fc).
PLAIN: dict[str, list] = {"plain22": _stages(2, 2, 5, 5, 5), "plain30": _stages(3, 3, 7, 7, 7)}
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


def parse_args(argv=None):
    quick = "VGG-16 gradients only, N(0,0.01) vs He, 32x32 (for the tests)"
    full = "224x224 gradients; training at width 0.25, 4 seeds, 600 steps (hours on 2 cores)"
    p = experiment.parser(__doc__, experiment.results_dir(__file__), quick=quick, full=full)
    for flag, kind, default, what in (
        ("--grad-size", int, None, "input size of the full-width gradient measurement (64)"),
        ("--grad-batch", int, None, "images in that batch (default 2)"),
        ("--width", float, None, "channel multiplier of the trained nets (default 0.125)"),
        ("--steps", int, None, "SGD steps per training run (default 150)"),
        ("--batch", int, 16, "training batch size (default %(default)s)"),
        ("--lr", float, 0.005, "SGD learning rate (default %(default)s)"),
        ("--momentum", float, 0.9, "SGD momentum (default %(default)s)"),
        ("--dropout", float, 0.0, "fc-head dropout in training (0: VGG's 0.5 slows all alike)"),
    ):
        p.add_argument(flag, type=kind, default=default, help=what)
    for flag, what in (
        ("--seeds", "comma-separated training seeds (default 0,1,2)"),
        ("--archs", "comma-separated nets to train (default: all six)"),
        ("--inits", "comma-separated inits to train (default: all that apply)"),
    ):
        p.add_argument(flag, help=what)
    for flag, what in (
        ("--literal-std", "train with std 0.01 / 0.1 as written, not scaled by 1/sqrt(width)"),
        ("--no-train", "only the full-width gradient measurement"),
        ("--no-grads", "only the training runs"),
        ("--no-plots", "write no PNGs"),
    ):
        p.add_argument(flag, action="store_true", help=what)
    return p.parse_args(argv)


def conv_act_std(metrics) -> list[tuple[str, float]]:
    """Std of every conv / fc *output* (pre-ReLU), in network order (VGG feats names sort right)."""
    items = diagnostics.by_layer(
        {k: v for k, v in metrics.items() if k.startswith("act_std/")}, "act_std"
    )
    return [(n, v) for n, v in items if n.startswith("conv") or n in ("fc6", "fc7", "fc8")]


def load_arrays(split: str, size: int, channels: int, n: int | None = None):
    return experiment.digits_arrays(
        DATASET, split, image_size=size, channels=channels, n=n, batch_size=256
    )


# --------------------------------------------------------------------------- part 1


def grads_at_init(archs_inits: list[tuple[str, str]], size: int, batch: int, head_options) -> dict:
    """Per-layer kernel gradient norms + activation stds at init, full width, one batch (seed 0)."""
    x, y = load_arrays("train", size, 3, batch)
    b = {"image": jnp.asarray(x), "label": jnp.asarray(y), "mask": jnp.ones((len(y),), bool)}
    tx = optim.make_optimizer({"learning_rate": 0.0}, 1, 1)  # lr 0: the step only measures
    out: dict = {}
    compiled: dict = {}
    for arch, init in archs_inits:
        t0 = time.perf_counter()
        # Built abstractly, then every conv/linear drawn once by the library's init: no
        # wasted default draw of the 100M-parameter fc6.
        opts = dict(num_classes=10, head="fc", head_options=head_options, dropout=0.0)
        model = nnx.eval_shape(
            lambda: make_model(arch, **opts, init="zeros", bias_init="zeros", in_channels=3)
        )
        initializers.apply(model, init, "zeros", rngs=nnx.Rngs(0))
        graphdef, _, state = state_from_model(model, tx)
        n_params = int(sum(v.size for v in jax.tree.leaves(state.params)))
        jax.block_until_ready(state.params)
        t_init = time.perf_counter() - t0
        t0 = time.perf_counter()
        if arch not in compiled:
            order = diagnostics.kernel_order(model, jax.ShapeDtypeStruct(x.shape, jnp.float32))
            step = make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True)
            compiled[arch] = (jax.jit(step).lower(state, b).compile(), order)
        step, order = compiled[arch]
        t_compile = time.perf_counter() - t0
        run = experiment.train(state, step, [b], 1)
        m, t_step = run.at(1), run.seconds
        del state, model, run
        norms, acts = experiment.kernel_grad_norms(m, order), conv_act_std(m)
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
            f"[grads] {arch:8s} {init:15s} loss {m['loss']:.3g}  |g| first {norms[0]:.3g} last "
            f"{norms[-1]:.3g}  (init {t_init:.1f}s, compile {t_compile:.1f}s, step {t_step:.1f}s)",
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


def train_one(arch: str, init: str, seed: int, steps: int, args, data, compiled: dict) -> dict:
    """Train one (arch, init, seed) at reduced width until ``steps`` or a non-finite loss.

    The metrics are fetched every 10 steps (the device runs ahead); a run stops at the
    first fetch that holds a non-finite loss, keeping that fetch's steps.
    """
    xtr, ytr, xte, yte = data
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
    tx = optim.make_optimizer({"learning_rate": args.lr, "momentum": args.momentum}, 1, steps)
    graphdef, eval_graphdef, state = state_from_model(model, tx)
    if not compiled:  # one compiled step per arch: inits and seeds share the graph
        shape = jax.ShapeDtypeStruct((args.batch,) + xtr.shape[1:], jnp.float32)
        step = make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True)
        compiled["order"] = diagnostics.kernel_order(model, shape)
        compiled["step"] = jax.jit(step, donate_argnums=0)
        compiled["eval"] = jax.jit(make_eval_step(eval_graphdef, "softmax_cross_entropy"))
    batches = experiment.shuffled_batches(xtr, ytr, args.batch, np.random.RandomState(seed))
    diverging = lambda _, m: not math.isfinite(m["loss"])  # noqa: E731
    run = experiment.train(state, compiled["step"], batches, steps, log_every=10, stop=diverging)
    losses = run.history["loss"].tolist()
    diverged = next((i + 1 for i, v in enumerate(losses) if not math.isfinite(v)), None)
    test = {"image": jnp.asarray(xte), "label": jnp.asarray(yte), "mask": np.ones(len(yte), bool)}
    ev = jax.device_get(compiled["eval"](run.state, test)) if diverged is None else None
    first = run.at(1)
    return {
        "init_spec": spec,
        "train_loss": losses,
        "train_acc": run.history["accuracy"].tolist(),
        "steps_run": len(losses),
        "diverged_at_step": diverged,
        "test_accuracy": float(ev["correct"] / ev["count"]) if ev is not None else None,
        "test_loss": float(ev["loss_sum"] / ev["count"]) if ev is not None else None,
        "step1_loss": first["loss"],
        "step1_grad_norm": experiment.kernel_grad_norms(first, compiled["order"]),
        "step1_global_grad_norm": first["global_grad_norm"],
        "step1_act_std": [v for _, v in conv_act_std(first)],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def train_runs(archs: list[str], seeds: list[int], steps: int, args, data) -> dict:
    """Every (arch, init, seed): loss curve, test accuracy, gradients at step 1."""
    out: dict = {}
    for arch in archs:
        inits = list(INITS) if arch in ARCH_CFG else list(PLAIN_INITS)
        if args.inits:
            inits = [i for i in inits if i in args.inits.split(",")]
        compiled: dict = {}
        for init in inits:
            for seed in seeds:
                rec = train_one(arch, init, seed, steps, args, data, compiled)
                out.setdefault(arch, {}).setdefault(init, {})[str(seed)] = rec
                at = rec["diverged_at_step"]
                acc = f"test acc {rec['test_accuracy']:.3f}" if at is None else None
                print(
                    f"[train] {arch:8s} {init:15s} seed {seed}: final loss "
                    f"{np.mean(rec['train_loss'][-10:]):.3g}, "
                    f"{acc or f'diverged (non-finite loss at step {at})'} ({rec['seconds']}s)",
                    flush=True,
                )
        out[arch]["layers"] = [p[: -len("/kernel")] for p in compiled["order"]]
    return out


def summarize(train: dict) -> dict:
    """Per net and init: mean ± std over seeds of test accuracy and final loss (last 10 steps)."""
    table = {}
    for arch, per_init in train.items():
        for init, runs in per_init.items():
            if init == "layers":
                continue
            recs = list(runs.values())
            accs = [r["test_accuracy"] for r in recs if r["test_accuracy"] is not None]
            at = [r["diverged_at_step"] for r in recs if r["diverged_at_step"] is not None]
            finals = [
                float(np.mean(r["train_loss"][-10:])) for r in recs if r["diverged_at_step"] is None
            ]
            table.setdefault(arch, {})[init] = {
                "seeds": len(recs),
                "diverged": len(at),
                "diverged_at_steps": at,
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


def _per_init(ax, recs: dict, key: str) -> None:
    for init, rec in recs.items():
        v = np.maximum(np.asarray(rec[key]), 1e-30)
        ax.semilogy(np.arange(1, len(v) + 1), v, "o-", ms=3, color=COLORS[init], label=INITS[init])


def plot_grads(grads: dict, path: str, title: str) -> None:
    plt = experiment.pyplot()
    fig, axes = experiment.panel_grid(plt, len(grads), size=(5.2, 3.8))
    for ax, arch in zip(axes.flat, grads):
        _per_init(ax, grads[arch], "grad_norm")
        fc6 = len(next(iter(grads[arch].values()))["grad_norm"]) - 2.5
        ax.axvline(fc6, color="grey", lw=0.8, ls=":")
        ax.set(title=f"{arch} ({depth(arch)} weight layers)", ylabel="‖∂L/∂W‖ at init")
        ax.set_xlabel("weight layer (1 = conv1_1; last 3 = fc6-8)")
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(title, fontsize=10)
    experiment.save_figure(fig, path, dpi=110, rect=(0, 0.05, 1, 1))


def plot_acts(grads: dict, path: str, title: str) -> None:
    plt = experiment.pyplot()
    archs = [a for a in ("vgg16", "plain30") if a in grads] or list(grads)[:1]
    fig, axes = experiment.panel_grid(plt, len(archs), size=(5.5, 3.8))
    for ax, arch in zip(axes.flat, archs):
        _per_init(ax, grads[arch], "act_std")
        ax.set(title=f"{arch}: forward signal at init", ylabel="std of the layer's output")
        ax.set_xlabel("weight layer (output, before ReLU)")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    experiment.save_figure(fig, path, dpi=110)


def short_label(init: str, runs: dict) -> str:
    spec = next(iter(runs.values()))["init_spec"]
    if spec.startswith("normal("):
        return f"N(0, {spec[len('normal(') : -1]}²)"
    return INITS[init].split(" (")[0]


def plot_training(train: dict, table: dict, path: str, title: str) -> None:
    plt = experiment.pyplot()
    fig, axes = experiment.panel_grid(plt, len(train))
    for ax, arch in zip(axes.flat, train):
        for init, runs in train[arch].items():
            if init == "layers":
                continue
            curves = [r["train_loss"] for r in runs.values() if r["diverged_at_step"] is None]
            t, color = table[arch][init], COLORS[init]
            if not curves:
                lo, hi = min(t["diverged_at_steps"]), max(t["diverged_at_steps"])
                span = f"{lo}" if lo == hi else f"{lo}-{hi}"
                ax.plot(
                    [],
                    [],
                    color=color,
                    label=f"{short_label(init, runs)}: non-finite at step {span}",
                )
                continue
            acc = f"acc {t['test_acc_mean']:.2f}±{t['test_acc_std']:.2f}"
            label = f"{short_label(init, runs)}: {acc}"
            experiment.mean_band(ax, curves, 10, color=color, label=label)  # 10-step means
        ax.axhline(LN10, color="grey", lw=0.8, ls=":")
        ax.set(ylim=(0, 3.0), xlim=(0, None), title=f"{arch} ({depth(arch)} layers)")
        ax.set(xlabel="SGD step", ylabel="train loss (10-step mean)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    experiment.save_figure(fig, path, dpi=110)


def make_plots(args, grads: dict, train, table, where: str, seeds) -> list[str]:
    plots = []
    if grads:
        title = f"Per-layer kernel gradient norm at initialisation ({where}, zero biases)"
        plot_grads(grads, os.path.join(args.out, "grad_norms_init.png"), title)
        title = f"Forward signal at initialisation ({where})"
        plot_acts(grads, os.path.join(args.out, "activations_init.png"), title)
        plots += ["grad_norms_init.png", "activations_init.png"]
    if train is not None:
        title = (
            f"Training at width {args.width} on embedded digits 32x32: mean ± std over seeds "
            f"{seeds} (SGD lr {args.lr}, momentum {args.momentum}, batch {args.batch}, dropout "
            f"{args.dropout}); "
            + ("std as written" if args.literal_std else "fixed stds scaled by 1/√width")
        )
        plot_training(train, table, os.path.join(args.out, "training.png"), title)
        plots.append("training.png")
    return plots


# --------------------------------------------------------------------------- main


def gradient_record(size: int, gbatch: int, head_opts, grads: dict) -> dict:
    return {
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
        "note": "grad_norm = L2 norm of dL/dW for each conv/fc kernel (mean softmax "
        "cross-entropy over the batch); act_std = std of each conv/fc output before its ReLU",
        "results": grads,
    }


def training_record(args, steps: int, seeds: list[int], table: dict, train: dict) -> dict:
    return {
        "width": args.width,
        "image_size": 32,
        "in_channels": 1,
        "batch": args.batch,
        "steps": steps,
        "seeds": seeds,
        "optimizer": {"sgd_lr": args.lr, "momentum": args.momentum, "weight_decay": 0.0},
        "head": "fc with head_options={'pool_size': 1} (the 1x1 map of a 32x32 input, no "
        "49x replication)",
        "dropout": args.dropout,
        "bias_init": "zeros",
        "loop": "vggjax.experiment.train (vggjax.training.fit), metrics fetched every 10 steps",
        "note": "a run whose loss becomes non-finite stops at the fetch that shows it "
        "(diverged_at_step)",
        "table": table,
        "runs": train,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    size = args.grad_size or (32 if args.quick else 224 if args.full else 64)
    gbatch = args.grad_batch or 2
    if args.quick:
        head_opts = {"pool_size": 1}
        pairs = [("vgg16", "normal(0.01)"), ("vgg16", "he_normal")]
    else:
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
        data = (*load_arrays("train", 32, 1), *load_arrays("test", 32, 1))
        train = train_runs(archs, seeds, steps, args, data)
        table = summarize(train)

    result = experiment.record(
        argv,
        experiment="depth_init",
        data={
            "dataset": f"{DATASET} (scikit-learn's 8x8 handwritten digits, embedded; 1,438 train "
            "/ 359 test, 10 classes) - CIFAR-10/ImageNet are not available offline",
            "gradient_batch": f"the first {gbatch} training images, upsampled to {size}x{size}, "
            "grey -> 3 channels",
            "training": "all training images at 32x32x1, reshuffled every epoch (remainder "
            "dropped); test split for accuracy",
        },
        gradient_measurement=gradient_record(size, gbatch, head_opts, grads),
        checks=checks,
    )
    if train is not None:
        result["training"] = training_record(args, steps, seeds, table, train)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    where = f"{size}x{size}, batch {gbatch}, full width"
    result["plots"] = [] if args.no_plots else make_plots(args, grads, train, table, where, seeds)
    experiment.write_result(result, args.out)
    for arch, rows in (table or {}).items():
        for init, t in rows.items():
            mean, std = t["test_acc_mean"], t["test_acc_std"]
            acc = "-" if mean is None else f"{mean:.3f}±{std:.3f}"
            print(f"{arch:8s} {init:15s} acc {acc}  diverged {t['diverged']}/{t['seeds']}")
    print(json.dumps({"checks": checks, "seconds": result["seconds"], "out": args.out}))
    return result


if __name__ == "__main__":
    main()
