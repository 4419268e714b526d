"""The figures of ``experiments/gap_dead_relu.py``, drawn from its ``result.json``.

python experiments/gap_dead_relu.py --replot    # redraw them from the committed result
"""

from __future__ import annotations

import math
import os

import numpy as np

from vggjax import experiment

LN2 = math.log(2.0)
# variant -> (legend label, bar label, colour)
STYLE = {
    "relu_scores": ("ReLU on scores (seed)", "ReLU scores\n(seed)", "C3"),
    "linear_scores": ("fix: no ReLU on scores", "linear\nscores", "C0"),
    "fc_after_gap": ("fix: FC after GAP (poster's)", "FC after\nGAP", "C2"),
    "batchnorm": ("BatchNorm (ReLU kept)", "BN,\nReLU scores", "C1"),
    "batchnorm_linear_scores": ("BatchNorm + no score ReLU", "BN, linear\nscores", "C4"),
}


def _smooth(x, k=10) -> np.ndarray:
    """The first ``k - 1`` values as they are, then the ``k``-step moving average."""
    x = np.asarray(x, float)
    return x if len(x) < k else np.concatenate([x[: k - 1], experiment.moving_average(x, k)])


def _curves(ax, runs: dict, key: str, log: bool = False, floor: float = 1e-9) -> None:
    for name, r in runs.items():
        if key in r["history"]:
            label, _, color = STYLE[name]
            v = np.asarray(r["history"][key], float)
            if log:
                ax.semilogy(np.maximum(v, floor), color=color, label=label, lw=0.9)
            else:
                ax.plot(v, color=color, label=label)
    ax.set_xlabel("update")


def panel_loss(ax, res: dict) -> None:
    for name, r in res["variant_runs"].items():
        label, _, color = STYLE[name]
        ax.plot(r["history"]["loss"], color=color, alpha=0.25, lw=0.7)
        ax.plot(_smooth(r["history"]["loss"]), color=color, label=label)
    ax.axhline(LN2, color="k", ls="--", lw=0.8, label="ln 2 = 0.693147")
    best = res["labels"]["prior_entropy_loss"]
    label = f"best constant prediction = {best:.3f}"
    ax.axhline(best, color="gray", ls=":", lw=1, label=label)
    ax.set_xlabel("update")
    ax.set_ylabel("train loss (multilabel soft margin, per label)")
    ax.set_title(f"(a) loss, lr {res['config']['lr']} momentum {res['config']['momentum']}")


def panel_layers(ax, res: dict, floor: float = 1e-9) -> None:
    relu = res["variant_runs"]["relu_scores"]
    # The layers the script followed (its TRACKED_GRADS that exist in the seed's network).
    layers = [k.removeprefix("grad_norm/") for k in relu["history"] if k.startswith("grad_norm/")]
    for i, k in enumerate(layers):
        g = np.maximum(np.asarray(relu["history"][f"grad_norm/{k}"], float), floor)
        ax.semilogy(g, label=k, color=f"C{i}")
    ax.axhline(floor, color="k", lw=0.5)
    ax.set_xlabel("update")
    ax.set_ylabel("gradient norm of the layer")
    collapse = relu["updates_to_collapse"]
    ax.set_title(f"(d) seed network: per-layer gradients (all exactly 0 from update {collapse})")
    ax.set_xlim(-1, max(30, 3 * (collapse or 10)))


def panel_sweep(ax, res: dict) -> None:
    sweep, cfg = res["lr_sweep"], res["config"]
    cap = cfg["sweep_cap"]
    ax.set_xlabel(f"learning rate (momentum {cfg['momentum']}; effective lr = lr / (1 - momentum))")
    ax.set_ylabel("updates until outputs and gradients are exactly 0")
    ax.set_title(f"(e) collapse vs learning rate (open triangles: alive after {cap})")
    if not sweep["runs"]:
        ax.text(0.5, 0.5, "no learning-rate sweep in this run", ha="center", transform=ax.transAxes)
        return
    for i, seed in enumerate(cfg["seeds"]):
        mine = [r for r in sweep["runs"] if r["seed"] == seed]
        done = [r for r in mine if r["updates_to_collapse"] is not None]
        alive = [r["lr"] for r in mine if r["updates_to_collapse"] is None]
        jitter = 1 + 0.04 * (i - 1)  # seeds side by side
        xs = [r["lr"] * jitter for r in done]
        ys = [max(r["updates_to_collapse"], 0.8) for r in done]
        ax.plot(xs, ys, "o", color=f"C{i}", label=f"seed {seed}")
        if alive:
            ax.plot(alive, [cap] * len(alive), "^", color=f"C{i}", mfc="none")
    med = sweep["median_updates_to_collapse_by_lr"]
    med = [(float(k), max(v, 0.8)) for k, v in med.items() if v is not None]
    ax.plot([k for k, _ in med], [v for _, v in med], "k-", lw=0.8, label="median")
    ax.set(xscale="log", yscale="log")


def panel_test(ax, res: dict) -> None:
    runs = res["variant_runs"]
    names = [n for n in runs if "test_mAP" in runs[n]]
    if not names:
        ax.axis("off")
        return
    x, colors = np.arange(len(names)), [STYLE[n][2] for n in names]
    ax.bar(x - 0.2, [runs[n]["test_mAP"] for n in names], 0.4, color=colors, label="test mAP")
    loss = [runs[n]["test_loss"] for n in names]
    ax.bar(x + 0.2, loss, 0.4, color=colors, alpha=0.4, hatch="//", label="test loss")
    chance = res["labels"]["chance_mAP"]
    ax.axhline(chance, color="gray", ls=":", label=f"chance mAP ≈ {chance:.2f}")
    ax.axhline(LN2, color="k", ls="--", lw=0.8, label="ln 2")
    ax.set_xticks(x)
    ax.set_xticklabels([STYLE[n][1] for n in names], fontsize=8)
    cfg = res["config"]
    ax.set_title(f"(f) after {cfg['steps']} updates: {cfg['test_examples']} test images")


def plot_main(res: dict, path: str) -> None:
    plt = experiment.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    runs, cfg, floor = res["variant_runs"], res["config"], 1e-9
    dataset = res["data"]["dataset"]
    panel_loss(axes[0, 0], res)
    _curves(axes[0, 1], runs, "dead_frac/score_relu")
    axes[0, 1].set_ylim(-0.03, 1.03)
    axes[0, 1].set_ylabel(
        "fraction of score units dead\n(0 for every image and position in the batch)"
    )
    axes[0, 1].set_title("(b) dead score ReLU units")
    _curves(axes[0, 2], runs, "grad_norm", log=True, floor=floor)
    axes[0, 2].axhline(floor, color="k", lw=0.5)
    axes[0, 2].text(0, floor * 1.6, "exactly 0 (drawn at 1e-9)", fontsize=7)
    axes[0, 2].set(ylabel="global gradient norm", title="(c) gradient norm")
    panel_layers(axes[1, 0], res, floor)
    panel_sweep(axes[1, 1], res)
    panel_test(axes[1, 2], res)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"WSDR (VGG-16 conv1-5 + GAP head, PyTorch default init), width {cfg['width']:g}, "
        f"{cfg['image_size']}x{cfg['image_size']} input, batch {cfg['batch_size']}, {dataset}"
    )
    experiment.save_figure(fig, path, dpi=80)


def plot_sweep(res: dict, path: str) -> None:
    plt = experiment.pyplot()
    runs = [r for r in res["lr_sweep"]["runs"] if r["seed"] == res["config"]["seeds"][0]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, r in enumerate(sorted(runs, key=lambda r: r["lr"])):
        for ax, key in zip(axes, ("loss", "dead_frac/score_relu")):
            ax.plot(r["history"][key], color=f"C{i}", label=f"lr {r['lr']:g}")
    axes[0].axhline(LN2, color="k", ls="--", lw=0.8)
    last = max((r["updates_to_collapse"] or r["steps_run"]) for r in runs)
    for ax, what in zip(axes, ("train loss", "fraction of dead score units")):
        ax.set(xlim=(-1, last + 15), xlabel="update", ylabel=what)
        ax.legend(fontsize=7)
    axes[0].set_title("seed network, seed 0: loss until it sticks at ln 2")
    axes[1].set_title("seed network, seed 0: dead score units")
    experiment.save_figure(fig, path, dpi=80)


def make_plots(result: dict, out: str) -> list[str]:
    plots = []
    if "relu_scores" in result["variant_runs"]:
        plot_main(result, os.path.join(out, "gap_dead_relu.png"))
        plots.append("gap_dead_relu.png")
    if result["lr_sweep"]["runs"]:
        plot_sweep(result, os.path.join(out, "gap_dead_relu_sweep.png"))
        plots.append("gap_dead_relu_sweep.png")
    return plots
