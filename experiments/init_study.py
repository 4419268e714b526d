"""Zero vs constant vs Kaiming initialisation of a two-conv BatchNorm net (reference case, seed 004).

The seed trains ``[conv 3→3 3×3 pad 1 no bias → BN → ReLU] × 2`` (:class:`vggjax.models.
seed_nets.TwoConvBN`) on ONE 224×224 standard-normal image whose every pixel is labelled
class 2 (cross-entropy over the 3 output channels), SGD lr 1e-2 momentum 0.1, 40
iterations, and records per iteration the loss and the mean / variance of both conv
kernels. Four runs: zero init; zero init with only conv2 in the forward; constant 5;
kaiming_normal(fan_in, relu). Its loop never calls ``optimizer.zero_grad()``, so PyTorch
*accumulates* gradients and step t uses g_1 + … + g_t: each run is done both ways,
"faithful" (``vggjax.optim.accumulate_gradients()`` chained before SGD) and "corrected"
(per-step gradients).

What it measures besides the seed's five curves: exact zeros (loss − ln 3, max |w| at every
iteration), the per-layer gradient norms and activation zero fractions at iteration 0 that
explain why two stacked zero convs never move while a single one does (and the seed's
formula for the single conv's gradient, checked against the measured one), and how much
of each run's progress comes from the accumulated gradients. ``--torch-check`` rebuilds the
net in PyTorch with the same initial weights and compares every loss curve.

    python experiments/init_study.py [--quick] [--out DIR] [--image FILE.npy] [--torch-check]

``--image`` takes a float32 array of shape (1, 3, 224, 224) (PyTorch layout, converted to
NHWC here). Default image: ``np.random.default_rng(seed).standard_normal((1, 3, 224, 224))``.
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

from vggjax import losses, optim
from vggjax.models.reference import TwoConvBN
from vggjax.train import make_train_step, state_from_model

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "init_study")
LN3 = math.log(3.0)
LABEL = 2  # every pixel is class 2, as in the seed
LR, MOMENTUM = 1e-2, 0.1

# name -> (init spec for both convs, only_conv2, what the seed's line was)
RUNS: dict[str, tuple[str, bool, str]] = {
    "zeros": ("zeros", False, "nn.init.constant_(m.weight, 0.)"),
    "zeros_only_conv2": (
        "zeros",
        True,
        "constant_(0.) with conv1, bn1, relu, bn2, relu commented out",
    ),
    "constant5": ("constant(5)", False, "nn.init.constant_(m.weight, 5.)"),
    "kaiming": (
        "he_normal(fan_in)",
        False,
        'nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")',
    ),
}
VARIANTS = ("faithful", "corrected")  # faithful = no zero_grad (gradients accumulate)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="10 iterations instead of 40 (used by the tests)"
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations per run (default 40, or 10 with --quick)",
    )
    p.add_argument(
        "--image", default=None, help="float32 .npy of shape (1, 3, 224, 224), PyTorch NCHW layout"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the default image and of the Kaiming draw"
    )
    p.add_argument(
        "--torch-check",
        action="store_true",
        help="re-run every case in PyTorch from the same weights",
    )
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def versions() -> dict:
    import flax

    out = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
    }
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].__version__
    return out


def load_image(path: str | None, seed: int) -> tuple[np.ndarray, str]:
    """The (1, 224, 224, 3) NHWC float32 input and a description of where it came from."""
    if path is None:
        nchw = np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)
        where = f"np.random.default_rng({seed}).standard_normal((1, 3, 224, 224)) (the seed's torch.randn image, seeded)"
    else:
        nchw = np.load(path)
        if nchw.shape != (1, 3, 224, 224):
            raise SystemExit(
                f"--image must hold an array of shape (1, 3, 224, 224) (NCHW); {path} has {nchw.shape}"
            )
        nchw = nchw.astype(np.float32)
        where = os.path.abspath(path)
    # PyTorch NCHW -> vggjax NHWC (this experiment's only layout conversion).
    return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)), where


def make_tx(faithful: bool) -> optax.GradientTransformation:
    """The seed's ``SGD(lr=1e-2, momentum=0.1)``; ``faithful`` feeds it the running gradient sum."""
    sgd = optim.make_optimizer(
        {"learning_rate": LR, "momentum": MOMENTUM}, steps_per_epoch=1, total_steps=1
    )
    return optax.chain(optim.accumulate_gradients(), sgd) if faithful else sgd


def _kernels(state) -> dict[str, np.ndarray]:
    p = nnx.to_pure_dict(state.params)
    return {name: np.asarray(p[name]["kernel"]) for name in ("conv1", "conv2")}


def _accumulated_norm(opt_state) -> float | None:
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optim.AccumulateState))
        if isinstance(s, optim.AccumulateState)
    ]
    return float(optax.tree.norm(found[0].grad_sum)) if found else None


# One compiled step per (only_conv2, variant): the inits share the graph, so reuse it.
_STEPS: dict[tuple[bool, str], tuple[optax.GradientTransformation, object]] = {}


def _setup(init: str, only_conv2: bool, variant: str, seed: int):
    """(state, jitted train step with diagnostics) for a fresh TwoConvBN."""
    model = TwoConvBN(init=init, only_conv2=only_conv2, rngs=nnx.Rngs(seed))
    key = (only_conv2, variant)
    if key not in _STEPS:
        tx = make_tx(variant == "faithful")
        graphdef = state_from_model(model, tx)[0]
        _STEPS[key] = (
            tx,
            jax.jit(make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True)),
        )
    tx, step = _STEPS[key]
    return state_from_model(model, tx)[2], step


def run_case(name: str, variant: str, image: np.ndarray, iterations: int, seed: int) -> dict:
    """Train one (init, variant) pair for ``iterations`` steps; record the seed's curves and more."""
    init, only_conv2, _ = RUNS[name]
    state, step = _setup(init, only_conv2, variant, seed)
    batch = {"image": jnp.asarray(image), "label": jnp.full(image.shape[:3], LABEL, jnp.int32)}

    w0 = _kernels(state)
    rec: dict[str, list] = {
        k: []
        for k in (
            "loss",
            "conv1_mean",
            "conv1_var",
            "conv2_mean",
            "conv2_var",
            "conv1_max_abs",
            "conv2_max_abs",
            "grad_norm",
            "grad_norm_conv1",
            "grad_norm_conv2",
            "grad_norm_bn1",
            "grad_norm_bn2",
            "applied_grad_norm",
        )
    }
    first_metrics = None
    for _ in range(iterations):
        w = _kernels(
            state
        )  # the weights this iteration's forward uses (the seed logs them there too)
        state, m = step(state, batch)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        first_metrics = first_metrics or m
        rec["loss"].append(m["loss"])
        for layer in ("conv1", "conv2"):
            rec[f"{layer}_mean"].append(m[f"weight_mean/{layer}"])
            rec[f"{layer}_var"].append(m[f"weight_var/{layer}"])
            rec[f"{layer}_max_abs"].append(float(np.max(np.abs(w[layer]))))
        rec["grad_norm"].append(m["grad_norm"])
        for layer in ("conv1", "conv2", "bn1", "bn2"):
            rec[f"grad_norm_{layer}"].append(m[f"grad_norm/{layer}"])
        acc = _accumulated_norm(state.opt_state)
        rec["applied_grad_norm"].append(acc if acc is not None else m["grad_norm"])
    w_end = _kernels(state)
    displacement = float(np.sqrt(sum(np.sum((w_end[k] - w0[k]) ** 2) for k in w0)))
    # Torch's SGD(var) uses the unbiased variance; the seed's .var() does too. Report both.
    n = w0["conv1"].size
    return {
        "init": init,
        "only_conv2": only_conv2,
        "variant": variant,
        **rec,
        "conv_var_unbiased_factor": n / (n - 1),
        "final_loss": rec["loss"][-1],
        "loss_drop": rec["loss"][0] - rec["loss"][-1],
        "conv_displacement_l2": displacement,
        "step0": {
            k: v
            for k, v in first_metrics.items()
            if k.startswith(("grad_norm/", "zero_frac/", "act_std/"))
        },
        "initial_kernels": {k: v.tolist() for k, v in w0.items()},
        "_w0": w0,
    }


def single_conv_gradient_check(image: np.ndarray, seed: int) -> dict:
    """Check the seed's formula ∂L/∂k = Σ_pixels input · ∂L/∂f for conv2 at zero init (only-conv2 run).

    With zero weights the logits are 0 everywhere, so ∂L/∂f = (softmax − onehot)/P =
    (1/3, 1/3, −2/3)/P at every pixel, and ∂L/∂k[dy, dx, ci, co] = S[dy, dx, ci]·δ[co] with
    S the sum of the zero-padded image shifted by (dy, dx). The measured gradient is read
    off the first SGD step (momentum buffer = g₁, so g₁ = (w₀ − w₁)/lr).
    """
    state, step = _setup("zeros", True, "corrected", seed)
    batch = {"image": jnp.asarray(image), "label": jnp.full(image.shape[:3], LABEL, jnp.int32)}
    new, m = step(state, batch)
    measured = -_kernels(new)["conv2"] / LR  # w0 = 0
    x = np.pad(image[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    h, w = image.shape[1:3]
    s = np.stack(
        [
            np.stack([x[dy : dy + h, dx : dx + w].sum(axis=(0, 1)) for dx in range(3)])
            for dy in range(3)
        ]
    )
    delta = (np.full(3, 1 / 3) - np.eye(3)[LABEL]) / (h * w)
    predicted = s[..., None] * delta[None, None, None, :]
    # dL/dlogits from the library loss at the zero logits, to show it is not zero.
    dlogits = jax.grad(lambda z: losses.softmax_cross_entropy(z, batch["label"]))(
        jnp.zeros(image.shape)
    )
    return {
        "dloss_dlogits_per_pixel": np.asarray(dlogits[0, 0, 0]).tolist(),
        "dloss_dlogits_norm": float(jnp.linalg.norm(dlogits)),
        "conv2_grad_norm_measured": float(np.linalg.norm(measured)),
        "conv2_grad_norm_formula": float(np.linalg.norm(predicted)),
        "formula_max_abs_error": float(np.max(np.abs(measured - predicted))),
        "formula_max_rel_error": float(
            np.max(np.abs(measured - predicted)) / np.max(np.abs(predicted))
        ),
        "image_shifted_sums_S_channel0": s[..., 0].tolist(),
    }


def last_relu_check() -> dict:
    """Gradient that crosses the last ReLU when its input is exactly 0 (as with zero init)."""
    labels = jnp.full((1, 4, 4), LABEL, jnp.int32)
    g = jax.grad(lambda z: losses.softmax_cross_entropy(jax.nn.relu(z), labels))(
        jnp.zeros((1, 4, 4, 3))
    )
    return {
        "relu_derivative_at_0": float(jax.grad(jax.nn.relu)(0.0)),
        "grad_through_relu_at_0_max_abs": float(jnp.max(jnp.abs(g))),
    }


def torch_check(results: dict, image: np.ndarray, iterations: int) -> dict:
    """Re-run every case in PyTorch from the same initial kernels; compare the loss curves."""
    import torch
    from torch import nn

    torch.set_num_threads(1)

    class Model(nn.Module):  # the seed's model, verbatim in structure
        def __init__(self, only_conv2: bool):
            super().__init__()
            self.only_conv2 = only_conv2
            self.conv1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(3)
            self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(3)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            if self.only_conv2:
                return self.conv2(x)
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
    label = torch.full((1, 224, 224), LABEL, dtype=torch.long)
    out = {}
    for key, r in results.items():
        model = Model(r["only_conv2"]).train()
        with torch.no_grad():
            for layer in ("conv1", "conv2"):  # HWIO -> OIHW
                getattr(model, layer).weight.copy_(
                    torch.from_numpy(r["_w0"][layer].transpose(3, 2, 0, 1).copy())
                )
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        crit = nn.CrossEntropyLoss()
        curve = []
        for _ in range(iterations):
            if r["variant"] == "corrected":
                opt.zero_grad()
            loss = crit(model(x), label)
            loss.backward()
            curve.append(loss.item())
            opt.step()
        diff = np.abs(np.array(curve) - np.array(r["loss"]))
        out[key] = {
            "torch_loss": curve,
            "max_abs_diff": float(diff.max()),
            "allclose_rtol1e-4_atol1e-5": bool(np.allclose(curve, r["loss"], rtol=1e-4, atol=1e-5)),
        }
    out["all_allclose"] = all(
        v["allclose_rtol1e-4_atol1e-5"] for v in out.values() if isinstance(v, dict)
    )
    out["torch_version"] = torch.__version__
    return out


def plot(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("loss", "loss"),
        ("conv1_mean", "conv1 mean"),
        ("conv1_var", "conv1 var"),
        ("conv2_mean", "conv2 mean"),
        ("conv2_var", "conv2 var"),
    ]
    files = []
    fig_all, axes_all = plt.subplots(5, len(RUNS), figsize=(4.2 * len(RUNS), 11), squeeze=False)
    for col, name in enumerate(RUNS):
        fig, axes = plt.subplots(5, 1, figsize=(6, 10), sharex=True)
        for ax_set, overview in ((axes, False), (axes_all[:, col], True)):
            for ax, (key, title) in zip(ax_set, panels):
                for variant, style in (("faithful", "-"), ("corrected", "--")):
                    r = results[f"{name}/{variant}"]
                    label = (
                        "faithful (no zero_grad)"
                        if variant == "faithful"
                        else "corrected (zero_grad)"
                    )
                    ax.plot(
                        r[key], style, marker="." if variant == "faithful" else None, label=label
                    )
                if key == "loss":
                    ax.axhline(LN3, color="grey", lw=0.8, ls=":", label="ln 3")
                ax.set_title(f"{name}: {title}" if overview else title, fontsize=9)
                ax.ticklabel_format(axis="y", useOffset=False)
                ax.grid(alpha=0.3)
            ax_set[0].legend(fontsize=7)
            ax_set[-1].set_xlabel("iteration")
        fig.suptitle(
            f"TwoConvBN, init {RUNS[name][0]}{' (only conv2)' if RUNS[name][1] else ''}",
            fontsize=11,
        )
        fig.tight_layout()
        path = os.path.join(out_dir, f"init_{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(os.path.basename(path))
    fig_all.tight_layout()
    path = os.path.join(out_dir, "overview.png")
    fig_all.savefig(path, dpi=75)
    plt.close(fig_all)
    return files + [os.path.basename(path)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    iterations = args.iterations or (10 if args.quick else 40)
    os.makedirs(args.out, exist_ok=True)
    image, image_source = load_image(args.image, args.seed)

    results = {}
    for name in RUNS:
        for variant in VARIANTS:
            results[f"{name}/{variant}"] = run_case(name, variant, image, iterations, args.seed)
            r = results[f"{name}/{variant}"]
            print(
                f"{name:>17s} {variant:9s} loss {r['loss'][0]:.6f} -> {r['final_loss']:.6f}",
                flush=True,
            )

    z = [results[f"zeros/{v}"] for v in VARIANTS]
    zeros_check = {
        "max_abs_loss_minus_ln3": max(abs(l - LN3) for r in z for l in r["loss"]),
        "max_abs_conv_weight": max(max(r["conv1_max_abs"] + r["conv2_max_abs"]) for r in z),
        "max_grad_norm": max(max(r["grad_norm"]) for r in z),
        "step0_zero_frac": {k: v for k, v in z[1]["step0"].items() if k.startswith("zero_frac/")},
    }
    only2 = results["zeros_only_conv2/corrected"]
    mechanism = {
        "two_conv_zero_init_step0_grad_norms": {
            k: v for k, v in z[1]["step0"].items() if k.startswith("grad_norm/")
        },
        "last_relu": last_relu_check(),
        "single_conv": single_conv_gradient_check(image, args.seed),
        "only_conv2_conv2_max_abs_after_run": {
            v: results[f"zeros_only_conv2/{v}"]["conv2_max_abs"][-1] for v in VARIANTS
        },
        "only_conv2_loss": {
            v: [results[f"zeros_only_conv2/{v}"]["loss"][i] for i in (0, -1)] for v in VARIANTS
        },
        "constant5_step0": {
            "loss_minus_ln3": results["constant5/corrected"]["loss"][0] - LN3,
            "grad_norms": {
                k: v
                for k, v in results["constant5/corrected"]["step0"].items()
                if k.startswith("grad_norm/")
            },
        },
    }
    accumulation = {}
    for name in RUNS:
        f, c = results[f"{name}/faithful"], results[f"{name}/corrected"]
        ratio = [a / g if g > 0 else None for a, g in zip(f["applied_grad_norm"], f["grad_norm"])]
        accumulation[name] = {
            "final_loss_faithful": f["final_loss"],
            "final_loss_corrected": c["final_loss"],
            "loss_drop_faithful": f["loss_drop"],
            "loss_drop_corrected": c["loss_drop"],
            "loss_drop_ratio_faithful_over_corrected": (f["loss_drop"] / c["loss_drop"])
            if c["loss_drop"]
            else None,
            "share_of_faithful_drop_from_accumulation": (1 - c["loss_drop"] / f["loss_drop"])
            if f["loss_drop"]
            else None,
            "conv_displacement_faithful": f["conv_displacement_l2"],
            "conv_displacement_corrected": c["conv_displacement_l2"],
            "displacement_ratio": (f["conv_displacement_l2"] / c["conv_displacement_l2"])
            if c["conv_displacement_l2"]
            else None,
            "applied_over_current_grad_norm_faithful": {
                "first": ratio[0],
                "middle": ratio[len(ratio) // 2],
                "last": ratio[-1],
            },
        }

    result = {
        "experiment": "init_study",
        "claim": "seed 004: zero init keeps a 2-conv BN net at loss ln 3 with both convs exactly 0; one conv alone learns; constant 5 and Kaiming train",
        "command": " ".join(
            [os.path.relpath(sys.argv[0]) if argv is None else "experiments/init_study.py"]
            + (sys.argv[1:] if argv is None else list(argv))
        ),
        "settings": {
            "model": "vggjax.models.reference.TwoConvBN (conv 3->3 3x3 pad 1 no bias, BN eps 1e-5, ReLU) x 2",
            "image": image_source,
            "image_shape_nhwc": list(image.shape),
            "label": f"every pixel = {LABEL}",
            "loss": "vggjax.losses.softmax_cross_entropy over the 3 channels, mean over pixels",
            "optimizer": f"vggjax.optim.make_optimizer(learning_rate={LR}, momentum={MOMENTUM}) (= torch SGD); faithful: "
            "optax.chain(vggjax.optim.accumulate_gradients(), sgd) = no zero_grad",
            "iterations": iterations,
            "quick": args.quick,
            "seed": args.seed,
            "recorded": "loss and kernel mean/var at each iteration BEFORE its update (as the seed logs them); "
            "var is the population variance (torch's .var() is unbiased: multiply by conv_var_unbiased_factor = 81/80)",
            "data": "no dataset: one random image, as in the seed",
        },
        "zeros_check": zeros_check,
        "mechanism": mechanism,
        "accumulation": accumulation,
        "runs": {
            k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
            for k, v in results.items()
        },
        "versions": versions(),
    }
    if args.torch_check:
        result["torch_check"] = torch_check(results, image, iterations)
        result["versions"] = versions()
    if not args.no_plots:
        result["plots"] = plot(results, args.out)
    result["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    summary = {
        "zeros_check": zeros_check,
        "final_loss": {k: round(v["final_loss"], 6) for k, v in results.items()},
        "torch_all_allclose": result.get("torch_check", {}).get("all_allclose"),
        "seconds": result["seconds"],
    }
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
