"""The CIFAR-2 networks of *Deep Learning with PyTorch* ch. 8: gradients, accuracy, L2 = weight decay.

Reference case (seed 002): ``Net`` (tanh, 18,090 parameters), ``NetDepth`` (three ReLU
conv blocks), ``NetRes`` (the same plus one identity skip around conv3) and ``NetResDeep``
(conv1, then ``n_blocks`` ResBlocks — conv3×3 without bias, BatchNorm with weight 0.5,
ReLU, ``+ x`` — then fc). The book builds the blocks as
``nn.Sequential(*(n_blocks * [ResBlock(...)]))``, a list repeating ONE module: every block
shares one set of weights. ``NetResDeep(shared_block=True)`` is that faithful network, the
default builds independent blocks. The book trains with SGD lr 1e-2, batch 64, 100
epochs, and adds the penalty ``λ·Σw²`` (λ = 0.001) to the loss, "equivalent" to PyTorch's
``weight_decay = 2λ``.

What this script measures (the book's CIFAR-2, airplane vs bird, is not available
offline; the stand-in is ``vggjax_digits2``, the embedded 3-vs-8 split of scikit-learn's
8×8 digits, 285 train / 72 test images, upsampled to 32×32 and replicated to 3 channels):

1. per-layer kernel gradient norms at initialisation (the first step's gradients, one
   batch of 64) and at several points of training, for Net, NetDepth, NetRes and
   NetResDeep with 10, 50 and 100 blocks, shared and independent;
2. an accuracy table (train/test accuracy in eval mode after training);
3. the numeric check that SGD on ``loss + l2_penalty(params, 0.001)`` equals SGD with
   ``weight_decay = 0.002`` (coupled), step by step (max |Δparam|), with and without
   momentum; decoupled decay with momentum is the control that must differ;
4. parameter counts: the shared-block net has ONE block's parameters.

    python experiments/book_nets.py [--quick] [--full] [--out DIR]

Training uses the library's ``make_train_step`` (with per-layer diagnostics); only the
penalty-in-the-loss copy of check 3 needs its own gradient (the library step has no
parameter-penalty hook), built from ``vggjax.losses.softmax_cross_entropy`` +
``vggjax.losses.l2_penalty`` and the library optimiser.
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

from vggjax import diagnostics, losses, optim
from vggjax.data import load
from vggjax.models.reference import Net, NetDepth, NetRes, NetResDeep
from vggjax.train import make_eval_step, make_train_step, merge, state_from_model

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "book_nets")
LR, BATCH, LAMBDA = 1e-2, 64, 1e-3  # the book's SGD lr, batch size and L2 lambda


def net_specs(blocks: tuple[int, ...]) -> dict[str, tuple]:
    """name -> (builder(seed), family). ResDeep nets use the book's n_chans1 = 32."""
    specs = {
        "Net": (lambda s: Net(rngs=s), "small"),
        "NetDepth": (lambda s: NetDepth(rngs=s), "small"),
        "NetRes": (lambda s: NetRes(rngs=s), "small"),
    }
    for n in blocks:
        specs[f"NetResDeep{n}"] = (
            lambda s, n=n: NetResDeep(n_blocks=n, rngs=s),
            "deep" if n > 10 else "resdeep",
        )
        specs[f"NetResDeep{n}_shared"] = (
            lambda s, n=n: NetResDeep(n_blocks=n, shared_block=True, rngs=s),
            "deep" if n > 10 else "resdeep",
        )
    return specs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="L2 check (10 steps), parameter counts, Net for 2 epochs (tests)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the book's 100 epochs for every net, 3 seeds (hours on CPU)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for Net/NetDepth/NetRes (default 50; the book's 100 with --full)",
    )
    p.add_argument(
        "--resdeep-epochs", type=int, default=None, help="epochs for NetResDeep10 (default 20)"
    )
    p.add_argument(
        "--deep-epochs", type=int, default=None, help="epochs for NetResDeep50/100 (default 2)"
    )
    p.add_argument("--seeds", default=None, help="seeds of Net/NetDepth/NetRes (default 0,1,2)")
    p.add_argument("--deep-seeds", default=None, help="seeds of the NetResDeep nets (default 0)")
    p.add_argument("--blocks", default="10,50,100", help="NetResDeep depths (default %(default)s)")
    p.add_argument(
        "--l2-steps",
        type=int,
        default=None,
        help="steps of the L2 = weight-decay check (default 100)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--replot", action="store_true", help="redraw the plots from OUT/result.json, train nothing"
    )
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


def load_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split of ``vggjax_digits2`` at 32×32×3 (dataset normalisation), int labels."""
    batches, _ = load(
        "vggjax_digits2",
        split,
        global_batch_size=512,
        train=False,
        image_size=32,
        channels=3,
        augment="none",
    )
    xs, ys = [], []
    for b in batches:
        xs.append(b["image"][b["mask"]])
        ys.append(b["label"][b["mask"]])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def epoch_batches(n: int, rng: np.random.RandomState):
    """Shuffled index batches of BATCH for one epoch; the last partial batch is dropped (one shape)."""
    perm = rng.permutation(n)
    return [perm[i : i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]


def param_count(model) -> int:
    return int(sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param))))


def stream_stats(metrics: dict, feats: list[str]) -> dict:
    """Forward statistics at step 1: each residual add's output (the stream) and fc1's input."""
    adds = [f for f in feats if "_add" in f]  # block{i}_add or block_add#{i}, in order
    return {
        "stream_mean": [metrics[f"act_mean/{f}"] for f in adds],
        "stream_std": [metrics[f"act_std/{f}"] for f in adds],
        "fc1_input_mean": metrics["act_mean/flatten"],
        "fc1_input_std": metrics["act_std/flatten"],
        "logits_std": metrics["act_std/fc2"],
    }


def kernel_grad_norms(metrics: dict, order: list[str]) -> list[float]:
    stats = {
        k: v for k, v in metrics.items() if k.startswith("grad_norm/") and k.endswith("/kernel")
    }
    return [v for _, v in diagnostics.by_layer(stats, "grad_norm", leaves=True, order=order)]


# --------------------------------------------------------------------------- training


def train_net(name: str, build, seed: int, epochs: int, data, fast_compile: bool) -> dict:
    """The book's loop for one net: SGD lr 1e-2, batch 64; per-layer gradients at a few steps."""
    xtr, ytr, xte, yte = data
    t0 = time.perf_counter()
    model = build(seed)
    steps_per_epoch = len(ytr) // BATCH
    total = epochs * steps_per_epoch
    tx = optim.make_optimizer({"learning_rate": LR}, steps_per_epoch, total)
    graphdef, eval_graphdef, state = state_from_model(model, tx)
    order = diagnostics.kernel_order(model, jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32))
    feats = diagnostics.feature_order(model, jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32))
    n_params = param_count(model)
    signal = {}
    # Unrolled 50/100-block nets take minutes to compile at XLA's default optimisation
    # level on 2 cores; level 0 compiles them in seconds and the convs run as fast.
    opts = {"xla_backend_optimization_level": 0} if fast_compile else None
    step = jax.jit(
        make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True),
        donate_argnums=0,
        compiler_options=opts,
    )
    evaluate = jax.jit(
        make_eval_step(eval_graphdef, "softmax_cross_entropy"), compiler_options=opts
    )
    record_at = sorted({1, max(1, total // 4), max(1, total // 2), total})
    rng = np.random.RandomState(seed)
    losses_, accs, grads, i = [], [], {}, 0
    pending = []
    t_first = None
    for _ in range(epochs):
        for idx in epoch_batches(len(ytr), rng):
            i += 1
            state, m = step(
                state, {"image": xtr[idx], "label": ytr[idx], "mask": np.ones(len(idx), bool)}
            )
            if i in record_at:
                host = diagnostics.to_python(m)
                grads[str(i)] = {
                    "grad_norm": kernel_grad_norms(host, order),
                    "global_grad_norm": host["global_grad_norm"],
                    "loss": host["loss"],
                }
                if i == 1:
                    signal = stream_stats(host, feats)
                if t_first is None:
                    t_first = time.perf_counter() - t0
            pending.append((m["loss"], m["accuracy"]))
    host = jax.device_get(pending)
    losses_ = [float(a) for a, _ in host]
    accs = [float(b) for _, b in host]

    def acc(x, y):
        out = jax.device_get(
            evaluate(state, {"image": x, "label": y, "mask": np.ones(len(y), bool)})
        )
        return float(out["correct"] / out["count"]), float(out["loss_sum"] / out["count"])

    train_acc, train_loss = acc(xtr, ytr)
    test_acc, test_loss = acc(xte, yte)
    rec = {
        "seed": seed,
        "epochs": epochs,
        "steps": total,
        "params": n_params,
        "layers": [p[: -len("/kernel")] for p in order],
        "grad_norms_at_step": grads,
        "forward_at_init": signal,
        "train_loss_curve": losses_,
        "train_batch_acc_curve": accs,
        "train_acc": train_acc,
        "train_loss": train_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "finite": bool(all(math.isfinite(v) for v in losses_)),
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_to_first_step": round(t_first or 0.0, 1),
        "xla_backend_optimization_level": 0 if fast_compile else "default",
    }
    print(
        f"[train] {name:20s} seed {seed}: {total} steps, loss {np.mean(losses_[-4:]):.3f}, train acc {train_acc:.3f}, "
        f"test acc {test_acc:.3f}, |g| conv1 at step 1 {grads['1']['grad_norm'][0]:.3g} ({rec['seconds']}s, "
        f"first step after {rec['seconds_to_first_step']}s)",
        flush=True,
    )
    return rec


# --------------------------------------------------------------------------- L2 check


def l2_check(steps: int, momentum: float, mode: str, data) -> dict:
    """Train two copies of ``Net`` step by step: penalty λΣw² in the loss vs weight_decay = 2λ."""
    xtr, ytr = data[0], data[1]
    tx_pen = optim.make_optimizer({"learning_rate": LR, "momentum": momentum}, 1, steps)
    tx_wd = optim.make_optimizer(
        {
            "learning_rate": LR,
            "momentum": momentum,
            "weight_decay": 2 * LAMBDA,
            "weight_decay_mode": mode,
        },
        1,
        steps,
    )
    g_pen, _, s_pen = state_from_model(Net(rngs=0), tx_pen)
    g_wd, _, s_wd = state_from_model(Net(rngs=0), tx_wd)

    def step_pen(state, batch):
        """Copy A: gradient of softmax CE + l2_penalty(params, λ), then plain SGD (no decay)."""
        model = merge(g_pen, state)

        def loss_fn(model):
            data_loss = losses.softmax_cross_entropy(
                model(batch["image"]), batch["label"], mask=batch["mask"]
            )
            return data_loss + losses.l2_penalty(nnx.state(model, nnx.Param), LAMBDA)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(model)
        updates, opt_state = tx_pen.update(grads, state.opt_state, state.params)
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        ), loss

    step_a = jax.jit(step_pen)
    step_b = jax.jit(
        make_train_step(g_wd, tx_wd, "softmax_cross_entropy")
    )  # copy B: the library step
    rng = np.random.RandomState(0)
    diffs, moved = [], []
    w0 = jax.tree.leaves(s_wd.params)
    batches = []
    while len(batches) < steps:
        batches += epoch_batches(len(ytr), rng)
    for idx in batches[:steps]:
        batch = {"image": xtr[idx], "label": ytr[idx], "mask": np.ones(len(idx), bool)}
        s_pen, _ = step_a(s_pen, batch)
        s_wd, _ = step_b(s_wd, batch)
        d = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), s_pen.params, s_wd.params)
        diffs.append(float(max(jax.tree.leaves(d))))
    moved = float(
        max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(s_wd.params), w0))
    )
    rec = {
        "momentum": momentum,
        "weight_decay_mode": mode,
        "steps": steps,
        "max_abs_param_diff": max(diffs),
        "max_abs_param_diff_per_step": diffs,
        "max_abs_param_change_from_init": moved,
        "param_scale": float(max(float(jnp.max(jnp.abs(w))) for w in w0)),
    }
    print(
        f"[l2]    momentum {momentum} {mode:9s}: max |param diff| over {steps} steps {max(diffs):.3g} "
        f"(params moved up to {moved:.3g})",
        flush=True,
    )
    return rec


def param_counts(blocks: tuple[int, ...]) -> dict:
    """Parameter counts from abstract models (nothing drawn)."""
    count = lambda f: param_count(nnx.eval_shape(f))  # noqa: E731
    base = count(lambda: NetResDeep(n_blocks=0))
    out = {
        "Net": count(lambda: Net()),
        "NetDepth": count(lambda: NetDepth()),
        "NetRes": count(lambda: NetRes()),
        "NetResDeep_no_blocks": base,
    }
    block = count(lambda: NetResDeep(n_blocks=1)) - base
    out["one_ResBlock"] = block
    for n in blocks:
        out[f"NetResDeep{n}"] = count(lambda: NetResDeep(n_blocks=n))
        out[f"NetResDeep{n}_shared"] = count(lambda: NetResDeep(n_blocks=n, shared_block=True))
    return out


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_init_grads(runs: dict, blocks, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
    ax = axes[0]
    for name, c in (("Net", "tab:blue"), ("NetDepth", "tab:orange"), ("NetRes", "tab:green")):
        if name in runs:
            g = runs[name][0]["grad_norms_at_step"]["1"]["grad_norm"]
            ax.semilogy(
                range(1, len(g) + 1),
                g,
                "o-",
                color=c,
                label=f"{name}: " + ", ".join(runs[name][0]["layers"]),
            )
    ax.set_xlabel("weight layer (network order)")
    ax.set_xticks(range(1, 6))
    ax.set_title("Net / NetDepth / NetRes: ‖∂L/∂W‖ at init (batch of 64)", fontsize=10)
    ax.set_ylabel("kernel gradient norm")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    colors = dict(zip(blocks, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for n in blocks:
        ind, sh = runs.get(f"NetResDeep{n}"), runs.get(f"NetResDeep{n}_shared")
        if ind:
            g = ind[0]["grad_norms_at_step"]["1"]["grad_norm"]  # conv1, block1..n, fc1, fc2
            ax.semilogy(
                np.arange(0, n + 3),
                g,
                "o-" if n <= 20 else "-",
                ms=3,
                color=colors[n],
                label=f"{n} independent blocks",
            )
        if sh:
            g = sh[0]["grad_norms_at_step"]["1"]["grad_norm"]  # conv1, shared block, fc1, fc2
            ax.semilogy([0, n + 1, n + 2], [g[0], g[2], g[3]], "x", color=colors[n], ms=7)
            ax.axhline(
                g[1], color=colors[n], ls="--", lw=1, label=f"{n} shared: the one block's ‖Σ_i g_i‖"
            )
    ax.set_title(
        "NetResDeep ‖∂L/∂W‖ at init: 0 = conv1, 1..n = block convs, n+1, n+2 = fc1, fc2;\n"
        "× = conv1/fc1/fc2 of the shared-block net, dashed = its one shared block conv",
        fontsize=9,
    )
    ax.set_xlabel("layer index")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_grads(runs: dict, path: str) -> None:
    plt = _plt()
    names = list(runs)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        rec = runs[name][0]
        at = rec["grad_norms_at_step"]
        cmap = plt.get_cmap("viridis")
        for k, (s, v) in enumerate(sorted(at.items(), key=lambda kv: int(kv[0]))):
            g = v["grad_norm"]
            ax.semilogy(
                range(len(g)),
                g,
                "o-" if len(g) < 20 else "-",
                ms=3,
                color=cmap(k / max(1, len(at) - 1)),
                label=f"step {s} (loss {v['loss']:.2f})",
            )
        ax.set_title(f"{name} (seed {rec['seed']}, {rec['steps']} steps)", fontsize=9)
        ax.set_xlabel("weight layer (network order)")
        ax.set_ylabel("‖∂L/∂W‖")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(
        "Per-layer kernel gradient norms during training (SGD lr 1e-2, batch 64; digits 3 vs 8)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(runs: dict, l2: list, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ax = axes[0]
    for name, recs in runs.items():
        n = min(len(r["train_loss_curve"]) for r in recs)
        c = np.asarray([r["train_loss_curve"][:n] for r in recs])
        k = 1 if n <= 20 else 4  # short runs: every step; longer: 1-epoch (4-step) mean
        sm = np.asarray([np.convolve(row, np.ones(k) / k, mode="valid") for row in c])
        xs = np.arange(k, n + 1)
        (line,) = ax.plot(
            xs, sm.mean(0), label=f"{name} ({len(recs)} seed{'s' if len(recs) > 1 else ''})"
        )
        if len(recs) > 1:
            ax.fill_between(
                xs,
                sm.mean(0) - sm.std(0),
                sm.mean(0) + sm.std(0),
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlim(1, None)
    ax.set_xlabel("SGD step (batch 64, 4 steps per epoch)")
    ax.set_ylabel("train loss (per step up to 20 steps, else 4-step mean)")
    ax.set_title("Training loss, mean ± std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in l2:
        d = np.maximum(np.asarray(r["max_abs_param_diff_per_step"]), 1e-12)
        ax.semilogy(
            np.arange(1, len(d) + 1),
            d,
            label=f"momentum {r['momentum']}, {r['weight_decay_mode']} decay",
        )
    ax.axhline(1e-6, color="grey", ls=":", lw=1)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("max |param(λΣw² in loss) − param(weight_decay=2λ)|")
    ax.set_title("Net: L2 penalty (λ=0.001) vs weight decay 0.002 (0 shown as 1e-12)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(result: dict, out: str) -> list[str]:
    runs = result["runs"]
    blocks = tuple(int(k) for k in result["shared_vs_independent_at_init"])
    plot_init_grads(runs, blocks, os.path.join(out, "grad_norms_init.png"))
    plot_training_grads(runs, os.path.join(out, "grad_norms_training.png"))
    plot_curves(
        runs, result["l2_vs_weight_decay"]["runs"], os.path.join(out, "training_and_l2.png")
    )
    return ["grad_norms_init.png", "grad_norms_training.png", "training_and_l2.png"]


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(os.path.join(args.out, "result.json")) as f:
            result = json.load(f)
        print("wrote", make_plots(result, args.out))
        return result
    blocks = tuple(int(b) for b in args.blocks.split(",") if b)
    if args.quick:
        epochs, rd_epochs, deep_epochs, l2_steps = args.epochs or 2, 0, 0, args.l2_steps or 10
        seeds, deep_seeds, blocks_run = [0], [], ()
    else:
        epochs = args.epochs or (100 if args.full else 50)
        rd_epochs = args.resdeep_epochs or (100 if args.full else 20)
        deep_epochs = args.deep_epochs or (100 if args.full else 2)
        l2_steps = args.l2_steps or 100
        seeds = [int(s) for s in (args.seeds or "0,1,2").split(",")]
        deep_seeds = [
            int(s) for s in (args.deep_seeds or ("0,1,2" if args.full else "0")).split(",")
        ]
        blocks_run = blocks

    xtr, ytr = load_arrays("train")
    xte, yte = load_arrays("test")
    data = (xtr, ytr, xte, yte)

    counts = param_counts(blocks)
    l2 = [
        l2_check(l2_steps, 0.0, "coupled", data),
        l2_check(l2_steps, 0.9, "coupled", data),
        l2_check(l2_steps, 0.9, "decoupled", data),
    ]

    specs = net_specs(blocks_run)
    if args.quick:
        specs = {"Net": specs["Net"]}
    runs: dict[str, list] = {}
    for name, (build, family) in specs.items():
        e = {"small": epochs, "resdeep": rd_epochs, "deep": deep_epochs}[family]
        for seed in seeds if family == "small" else deep_seeds:
            runs.setdefault(name, []).append(
                train_net(name, build, seed, e, data, fast_compile=family != "small")
            )

    table = {}
    for name, recs in runs.items():
        ta, te = [r["test_acc"] for r in recs], [r["train_acc"] for r in recs]
        first = [r["grad_norms_at_step"]["1"] for r in recs]
        table[name] = {
            "params": recs[0]["params"],
            "epochs": recs[0]["epochs"],
            "steps": recs[0]["steps"],
            "seeds": len(recs),
            "train_acc_mean": float(np.mean(te)),
            "train_acc_std": float(np.std(te)),
            "test_acc_mean": float(np.mean(ta)),
            "test_acc_std": float(np.std(ta)),
            "final_train_loss_mean": float(
                np.mean([np.mean(r["train_loss_curve"][-4:]) for r in recs])
            ),
            "init_grad_norm_first_layer": float(np.mean([f["grad_norm"][0] for f in first])),
            "init_grad_norm_last_layer": float(np.mean([f["grad_norm"][-1] for f in first])),
            "init_global_grad_norm": float(np.mean([f["global_grad_norm"] for f in first])),
            "seconds_per_run": float(np.mean([r["seconds"] for r in recs])),
        }
    # Shared vs independent blocks at init: the shared kernel's gradient is the sum of the
    # n per-application gradients; compare with the independent blocks' gradients.
    shared_vs_indep = {}
    for n in blocks_run:
        a, b = runs.get(f"NetResDeep{n}"), runs.get(f"NetResDeep{n}_shared")
        if a and b:
            ga = a[0]["grad_norms_at_step"]["1"]["grad_norm"][1:-2]
            gb = b[0]["grad_norms_at_step"]["1"]["grad_norm"][1]
            shared_vs_indep[str(n)] = {
                "independent_block_grad_norm_min": min(ga),
                "independent_block_grad_norm_max": max(ga),
                "independent_block_grad_norm_first": ga[0],
                "independent_block_grad_norm_last": ga[-1],
                "independent_blocks_combined_norm": float(np.sqrt(np.sum(np.square(ga)))),
                "shared_block_grad_norm": gb,
            }

    checks = {
        "l2_equals_weight_decay_plain_sgd_max_diff": l2[0]["max_abs_param_diff"],
        "l2_equals_weight_decay_momentum_max_diff": l2[1]["max_abs_param_diff"],
        "l2_vs_decoupled_momentum_max_diff (control, must differ)": l2[2]["max_abs_param_diff"],
        "net_params_18090": counts["Net"] == 18090,
        "shared_block_params_equal_one_block": all(
            counts[f"NetResDeep{n}_shared"] - counts["NetResDeep_no_blocks"]
            == counts["one_ResBlock"]
            for n in blocks
        ),
        "independent_params_equal_n_blocks": all(
            counts[f"NetResDeep{n}"] - counts["NetResDeep_no_blocks"] == n * counts["one_ResBlock"]
            for n in blocks
        ),
    }
    result = {
        "experiment": "book_nets",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "data": "vggjax_digits2: the embedded two-class split (digit 3 vs digit 8) of scikit-learn's 8x8 handwritten "
        "digits, 285 train / 72 test, upsampled to 32x32, grey replicated to 3 channels, dataset "
        "normalisation; stand-in for the book's CIFAR-2 (airplane vs bird), not available offline",
        "protocol": {
            "optimizer": f"SGD lr {LR}, no momentum, no weight decay",
            "batch": BATCH,
            "steps_per_epoch": len(ytr) // BATCH,
            "last_partial_batch": "dropped (one compiled shape)",
            "epochs": {
                "Net/NetDepth/NetRes": epochs,
                "NetResDeep10": rd_epochs,
                "NetResDeep50/100": deep_epochs,
            },
            "seeds": {"Net/NetDepth/NetRes": seeds, "NetResDeep*": deep_seeds},
            "init": "library defaults: PyTorch's default for conv/fc, kaiming_normal(fan_in) for ResBlock "
            "convs, BatchNorm weight 0.5 / bias 0 in ResBlocks",
            "accuracy": "eval mode (BatchNorm running statistics) on the whole train and test splits",
            "grad_norms": "L2 norm of dL/dW per conv/fc kernel from the train step's diagnostics "
            "(step 1 = gradients at initialisation)",
        },
        "param_counts": counts,
        "l2_vs_weight_decay": {
            "lambda": LAMBDA,
            "weight_decay": 2 * LAMBDA,
            "net": "Net",
            "lr": LR,
            "runs": l2,
        },
        "accuracy_table": table,
        "shared_vs_independent_at_init": shared_vs_indep,
        "runs": runs,
        "checks": checks,
        "versions": versions(),
    }
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["plots"] = [] if args.no_plots else make_plots(result, args.out)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(
        f"{'net':22s} {'params':>8s} {'epochs':>6s} {'seeds':>5s} {'train acc':>13s} {'test acc':>13s}"
    )
    for name, t in table.items():
        print(
            f"{name:22s} {t['params']:8d} {t['epochs']:6d} {t['seeds']:5d} "
            f"{t['train_acc_mean']:.3f}±{t['train_acc_std']:.3f} {t['test_acc_mean']:.3f}±{t['test_acc_std']:.3f}"
        )
    print(json.dumps({"checks": checks, "seconds": result["seconds"], "out": args.out}))
    return result


if __name__ == "__main__":
    main()
