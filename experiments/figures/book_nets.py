"""The figures of ``experiments/book_nets.py``, drawn from its ``result.json``.

python experiments/book_nets.py --replot    # redraw them from the committed result
"""

from __future__ import annotations

import os

import numpy as np

from vggjax import experiment


def plot_init_grads(runs: dict, blocks, path: str) -> None:
    plt = experiment.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
    ax = axes[0]
    for name, c in (("Net", "tab:blue"), ("NetDepth", "tab:orange"), ("NetRes", "tab:green")):
        if name in runs:
            g = runs[name][0]["grad_norms_at_step"]["1"]["grad_norm"]
            label = f"{name}: " + ", ".join(runs[name][0]["layers"])
            ax.semilogy(range(1, len(g) + 1), g, "o-", color=c, label=label)
    ax.set_xticks(range(1, 6))
    ax.set(xlabel="weight layer (network order)", ylabel="kernel gradient norm")
    ax.set_title("Net / NetDepth / NetRes: ‖∂L/∂W‖ at init (batch of 64)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    colors = dict(zip(blocks, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for n in blocks:
        ind, sh = runs.get(f"NetResDeep{n}"), runs.get(f"NetResDeep{n}_shared")
        if ind:
            g = ind[0]["grad_norms_at_step"]["1"]["grad_norm"]  # conv1, block1..n, fc1, fc2
            style = "o-" if n <= 20 else "-"
            label = f"{n} independent blocks"
            ax.semilogy(np.arange(0, n + 3), g, style, ms=3, color=colors[n], label=label)
        if sh:
            g = sh[0]["grad_norms_at_step"]["1"]["grad_norm"]  # conv1, shared block, fc1, fc2
            ax.semilogy([0, n + 1, n + 2], [g[0], g[2], g[3]], "x", color=colors[n], ms=7)
            label = f"{n} shared: the one block's ‖Σ_i g_i‖"
            ax.axhline(g[1], color=colors[n], ls="--", lw=1, label=label)
    ax.set_title(
        "NetResDeep ‖∂L/∂W‖ at init: 0 = conv1, 1..n = block convs, n+1, n+2 = fc1, fc2;\n"
        "× = conv1/fc1/fc2 of the shared-block net, dashed = its one shared block conv",
        fontsize=9,
    )
    ax.set_xlabel("layer index")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    experiment.save_figure(fig, path, dpi=110)


def plot_training_grads(runs: dict, path: str) -> None:
    plt = experiment.pyplot()
    fig, axes = experiment.panel_grid(plt, len(runs), size=(5.2, 3.4))
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, runs):
        rec = runs[name][0]
        at = sorted(rec["grad_norms_at_step"].items(), key=lambda kv: int(kv[0]))
        for k, (s, v) in enumerate(at):
            g = v["grad_norm"]
            color, label = cmap(k / max(1, len(at) - 1)), f"step {s} (loss {v['loss']:.2f})"
            ax.semilogy(
                range(len(g)), g, "o-" if len(g) < 20 else "-", ms=3, color=color, label=label
            )
        ax.set_title(f"{name} (seed {rec['seed']}, {rec['steps']} steps)", fontsize=9)
        ax.set(xlabel="weight layer (network order)", ylabel="‖∂L/∂W‖")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(
        "Per-layer kernel gradient norms during training (SGD lr 1e-2, batch 64; digits 3 vs 8)",
        fontsize=10,
    )
    experiment.save_figure(fig, path, dpi=100)


def plot_curves(runs: dict, l2: list, path: str) -> None:
    plt = experiment.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ax = axes[0]
    for name, recs in runs.items():
        curves = [r["train_loss_curve"] for r in recs]
        k = 1 if min(map(len, curves)) <= 20 else 4  # short runs: every step; else 1-epoch means
        label = f"{name} ({len(recs)} seed{'s' if len(recs) > 1 else ''})"
        experiment.mean_band(ax, curves, k, label=label)
    ax.set(xscale="log", yscale="log", xlim=(1, None), title="Training loss, mean ± std over seeds")
    ax.set_xlabel("SGD step (batch 64, 4 steps per epoch)")
    ax.set_ylabel("train loss (per step up to 20 steps, else 4-step mean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in l2:
        d = np.maximum(np.asarray(r["max_abs_param_diff_per_step"]), 1e-12)
        label = f"momentum {r['momentum']}, {r['weight_decay_mode']} decay"
        ax.semilogy(np.arange(1, len(d) + 1), d, label=label)
    ax.axhline(1e-6, color="grey", ls=":", lw=1)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("max |param(λΣw² in loss) − param(weight_decay=2λ)|")
    ax.set_title("Net: L2 penalty (λ=0.001) vs weight decay 0.002 (0 shown as 1e-12)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    experiment.save_figure(fig, path, dpi=110)


def make_plots(result: dict, out: str) -> list[str]:
    runs = result["runs"]
    blocks = tuple(int(k) for k in result["shared_vs_independent_at_init"])
    plot_init_grads(runs, blocks, os.path.join(out, "grad_norms_init.png"))
    plot_training_grads(runs, os.path.join(out, "grad_norms_training.png"))
    l2 = result["l2_vs_weight_decay"]["runs"]
    plot_curves(runs, l2, os.path.join(out, "training_and_l2.png"))
    return ["grad_norms_init.png", "grad_norms_training.png", "training_and_l2.png"]
