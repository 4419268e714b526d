"""Zero vs constant vs Kaiming initialisation of a two-conv BatchNorm net (reference case 004).

The seed trains ``[conv 3→3 3×3 pad 1 no bias → BN → ReLU] × 2``
(:class:`vggjax.models.reference.TwoConvBN`) on ONE 224×224 standard-normal image whose
every pixel is labelled class 2 (cross-entropy over the 3 output channels), SGD lr 1e-2
momentum 0.1, 40 iterations, and records per iteration the loss and the mean / variance of
both conv kernels. Four runs: zero init; zero init with only conv2 in the forward; constant
5; kaiming_normal(fan_in, relu). Its loop never calls ``optimizer.zero_grad()``, so PyTorch
*accumulates* gradients and step t uses g_1 + … + g_t: each run is done both ways,
"faithful" (the optimizer handed to :func:`vggjax.training.fit` is
``vggjax.optim.accumulate_gradients()`` chained before SGD) and "corrected" (per-step
gradients).

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

import itertools
import json
import math
import os
import time
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vggjax import experiment, losses, optim
from vggjax.models.reference import TwoConvBN
from vggjax.training import make_train_step, state_from_model

LN3 = math.log(3.0)
LABEL = 2  # every pixel is class 2, as in the seed
LR, MOMENTUM = 1e-2, 0.1

# name -> (init of both convs, only conv2 in the forward); the seed's line as a comment.
RUNS: dict[str, tuple[str, bool]] = {
    "zeros": ("zeros", False),  # nn.init.constant_(m.weight, 0.)
    "zeros_only_conv2": ("zeros", True),  # the same, conv1, bn1, relu, bn2, relu commented out
    "constant5": ("constant(5)", False),  # nn.init.constant_(m.weight, 5.)
    "kaiming": (
        "he_normal(fan_in)",
        False,
    ),  # kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
}
VARIANTS = ("faithful", "corrected")  # faithful = no zero_grad (gradients accumulate)
LAYERS = ("conv1", "conv2")


def parse_args(argv=None):
    p = experiment.parser(
        __doc__,
        experiment.results_dir(__file__),
        quick="10 iterations instead of 40 (used by the tests)",
    )
    p.add_argument(
        "--iterations", type=int, help="iterations per run (default 40, or 10 with --quick)"
    )
    p.add_argument("--image", help="float32 .npy of shape (1, 3, 224, 224), PyTorch NCHW layout")
    p.add_argument("--seed", type=int, default=0, help="seed of the default image and of Kaiming")
    p.add_argument(
        "--torch-check", action="store_true", help="re-run every case in PyTorch, same weights"
    )
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def load_image(path: str | None, seed: int) -> tuple[np.ndarray, str]:
    """The (1, 224, 224, 3) NHWC float32 input and a description of where it came from."""
    if path is None:
        nchw = np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)
        where = (
            f"np.random.default_rng({seed}).standard_normal((1, 3, 224, 224)) "
            "(the seed's torch.randn image, seeded)"
        )
    else:
        nchw = np.load(path)
        if nchw.shape != (1, 3, 224, 224):
            raise SystemExit(
                f"--image must hold an array of shape (1, 3, 224, 224) (NCHW); {path} has "
                f"{nchw.shape}"
            )
        nchw = nchw.astype(np.float32)
        where = os.path.abspath(path)
    # PyTorch NCHW -> vggjax NHWC (this experiment's only layout conversion).
    return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)), where


def make_tx(faithful: bool) -> optax.GradientTransformation:
    """The seed's ``SGD(lr=1e-2, momentum=0.1)``; ``faithful`` feeds it the running gradient sum
    (no ``zero_grad``: the missing call is part of the optimizer that ``fit`` steps)."""
    sgd = optim.make_optimizer(
        {"learning_rate": LR, "momentum": MOMENTUM}, steps_per_epoch=1, total_steps=1
    )
    return optax.chain(optim.accumulate_gradients(), sgd) if faithful else sgd


def _kernels(state) -> dict[str, np.ndarray]:
    p = nnx.to_pure_dict(state.params)
    return {name: np.asarray(p[name]["kernel"]) for name in LAYERS}


def _accumulated_norm(opt_state) -> float | None:
    """Norm of the gradient sum the faithful optimizer applied (None: corrected, no sum)."""
    grad_sum = optax.tree.get(opt_state, "grad_sum", None)  # optim.AccumulateState's
    return None if grad_sum is None else float(optax.tree.norm(grad_sum))


def _batch(image: np.ndarray) -> dict:
    return {"image": jnp.asarray(image), "label": jnp.full(image.shape[:3], LABEL, jnp.int32)}


# One compiled step per (only_conv2, variant): the inits share the graph, so reuse it.
_STEPS: dict[tuple[bool, str], tuple[optax.GradientTransformation, object]] = {}


def _setup(init: str, only_conv2: bool, variant: str, seed: int):
    """(state, jitted train step with diagnostics) for a fresh TwoConvBN."""
    model = TwoConvBN(init=init, only_conv2=only_conv2, rngs=nnx.Rngs(seed))
    key = (only_conv2, variant)
    if key not in _STEPS:
        tx = make_tx(variant == "faithful")
        graphdef = state_from_model(model, tx)[0]
        step = make_train_step(graphdef, tx, "softmax_cross_entropy", with_diagnostics=True)
        _STEPS[key] = (tx, jax.jit(step))
    tx, step = _STEPS[key]
    return state_from_model(model, tx)[2], step


def _probe(_, state) -> tuple[dict[str, float], float | None]:
    """Max |w| of both kernels (what the next iteration's forward uses) and the applied gradient."""
    max_abs = {k: float(np.max(np.abs(w))) for k, w in _kernels(state).items()}
    return max_abs, _accumulated_norm(state.opt_state)


def run_case(name: str, variant: str, image: np.ndarray, iterations: int, seed: int) -> dict:
    """Train one (init, variant) pair for ``iterations`` steps; record the seed's curves and more.

    The seed logs the loss and the kernels' mean/var of each iteration's forward, i.e. before
    its update: the step's own metrics (``weight_mean/…`` are of the weights it starts from).
    """
    init, only_conv2 = RUNS[name]
    state, step = _setup(init, only_conv2, variant, seed)
    w0 = _kernels(state)
    run = experiment.train(
        state,
        step,
        itertools.repeat(_batch(image)),
        iterations,
        probe=_probe,
        probe_every=1,
        probe_at_start=True,
    )
    h = run.history
    probes = [p for _, p in run.probes]  # before iteration 1, after 1, ..., after the last
    rec = {"loss": h["loss"].tolist()}
    for layer in LAYERS:
        rec[f"{layer}_mean"] = h[f"weight_mean/{layer}"].tolist()
        rec[f"{layer}_var"] = h[f"weight_var/{layer}"].tolist()
    for layer in LAYERS:
        rec[f"{layer}_max_abs"] = [w[layer] for w, _ in probes[:-1]]
    rec["grad_norm"] = h["grad_norm"].tolist()
    for layer in (*LAYERS, "bn1", "bn2"):
        rec[f"grad_norm_{layer}"] = h[f"grad_norm/{layer}"].tolist()
    rec["applied_grad_norm"] = [
        g if acc is None else acc for (_, acc), g in zip(probes[1:], rec["grad_norm"])
    ]
    w_end = _kernels(run.state)
    displacement = float(np.sqrt(sum(np.sum((w_end[k] - w0[k]) ** 2) for k in w0)))
    n = w0["conv1"].size  # torch's .var() is unbiased: report the factor
    prefixes = ("grad_norm/", "zero_frac/", "act_std/")
    return {
        "init": init,
        "only_conv2": only_conv2,
        "variant": variant,
        **rec,
        "conv_var_unbiased_factor": n / (n - 1),
        "final_loss": rec["loss"][-1],
        "loss_drop": rec["loss"][0] - rec["loss"][-1],
        "conv_displacement_l2": displacement,
        "step0": {k: v for k, v in run.at(1).items() if k.startswith(prefixes)},
        "initial_kernels": {k: v.tolist() for k, v in w0.items()},
        "_w0": w0,
    }


def single_conv_gradient_check(image: np.ndarray, seed: int) -> dict:
    """Check the seed's formula ∂L/∂k = Σ_pixels input · ∂L/∂f for conv2 at zero init (only conv2).

    With zero weights the logits are 0 everywhere, so ∂L/∂f = (softmax − onehot)/P =
    (1/3, 1/3, −2/3)/P at every pixel, and ∂L/∂k[dy, dx, ci, co] = S[dy, dx, ci]·δ[co] with
    S the sum of the zero-padded image shifted by (dy, dx). The measured gradient is read
    off the first SGD step (momentum buffer = g₁, so g₁ = (w₀ − w₁)/lr).
    """
    state, step = _setup("zeros", True, "corrected", seed)
    batch = _batch(image)
    measured = -_kernels(experiment.train(state, step, [batch], 1).state)["conv2"] / LR  # w0 = 0
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
    error = np.max(np.abs(measured - predicted))
    return {
        "dloss_dlogits_per_pixel": np.asarray(dlogits[0, 0, 0]).tolist(),
        "dloss_dlogits_norm": float(jnp.linalg.norm(dlogits)),
        "conv2_grad_norm_measured": float(np.linalg.norm(measured)),
        "conv2_grad_norm_formula": float(np.linalg.norm(predicted)),
        "formula_max_abs_error": float(error),
        "formula_max_rel_error": float(error / np.max(np.abs(predicted))),
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
    """Re-run every case in PyTorch from the same initial kernels; compare the loss curves.

    The seed's own loop, in PyTorch: the corrected variant calls ``zero_grad``, the faithful
    one does not (this is the reference the JAX runs are checked against).
    """
    import torch
    from torch import nn

    torch.set_num_threads(1)

    def model(only_conv2: bool) -> nn.Sequential:  # the seed's model, layer for layer
        conv2 = {"conv2": nn.Conv2d(3, 3, 3, padding=1, bias=False)}
        if only_conv2:
            return nn.Sequential(OrderedDict(conv2))
        conv1 = {"conv1": nn.Conv2d(3, 3, 3, padding=1, bias=False)}
        bn_relu = lambda i: {f"bn{i}": nn.BatchNorm2d(3), f"relu{i}": nn.ReLU()}  # noqa: E731
        return nn.Sequential(OrderedDict({**conv1, **bn_relu(1), **conv2, **bn_relu(2)}))

    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
    label = torch.full((1, 224, 224), LABEL, dtype=torch.long)
    out = {}
    for key, r in results.items():
        net = model(r["only_conv2"]).train()
        with torch.no_grad():
            for name, conv in net.named_children():
                if name in LAYERS:  # HWIO -> OIHW
                    conv.weight.copy_(torch.from_numpy(r["_w0"][name].transpose(3, 2, 0, 1).copy()))
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        crit = nn.CrossEntropyLoss()
        curve = []
        for _ in range(iterations):
            if r["variant"] == "corrected":
                opt.zero_grad()
            loss = crit(net(x), label)
            loss.backward()
            curve.append(loss.item())
            opt.step()
        close = bool(np.allclose(curve, r["loss"], rtol=1e-4, atol=1e-5))
        out[key] = {
            "torch_loss": curve,
            "max_abs_diff": float(np.max(np.abs(np.array(curve) - np.array(r["loss"])))),
            "allclose_rtol1e-4_atol1e-5": close,
        }
    out["all_allclose"] = all(v["allclose_rtol1e-4_atol1e-5"] for v in out.values())
    out["torch_version"] = torch.__version__
    return out


def plot(results: dict, out_dir: str) -> list[str]:
    """One figure per init (the seed's five curves, both variants) and an overview of all four."""
    plt = experiment.pyplot()
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
                    faithful = variant == "faithful"
                    label = "faithful (no zero_grad)" if faithful else "corrected (zero_grad)"
                    r = results[f"{name}/{variant}"]
                    ax.plot(r[key], style, marker="." if faithful else None, label=label)
                if key == "loss":
                    ax.axhline(LN3, color="grey", lw=0.8, ls=":", label="ln 3")
                ax.set_title(f"{name}: {title}" if overview else title, fontsize=9)
                ax.ticklabel_format(axis="y", useOffset=False)
                ax.grid(alpha=0.3)
            ax_set[0].legend(fontsize=7)
            ax_set[-1].set_xlabel("iteration")
        init, only_conv2 = RUNS[name]
        fig.suptitle(f"TwoConvBN, init {init}{' (only conv2)' if only_conv2 else ''}", fontsize=11)
        experiment.save_figure(fig, os.path.join(out_dir, f"init_{name}.png"), dpi=90)
        files.append(f"init_{name}.png")
    experiment.save_figure(fig_all, os.path.join(out_dir, "overview.png"), dpi=75)
    return files + ["overview.png"]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def accumulation_summary(results: dict) -> dict:
    """Per init: how much of the faithful run's progress comes from the accumulated gradients."""
    out = {}
    for name in RUNS:
        f, c = results[f"{name}/faithful"], results[f"{name}/corrected"]
        ratio = [_ratio(a, g) for a, g in zip(f["applied_grad_norm"], f["grad_norm"])]
        share = _ratio(c["loss_drop"], f["loss_drop"])
        out[name] = {
            "final_loss_faithful": f["final_loss"],
            "final_loss_corrected": c["final_loss"],
            "loss_drop_faithful": f["loss_drop"],
            "loss_drop_corrected": c["loss_drop"],
            "loss_drop_ratio_faithful_over_corrected": _ratio(f["loss_drop"], c["loss_drop"]),
            "share_of_faithful_drop_from_accumulation": None if share is None else 1 - share,
            "conv_displacement_faithful": f["conv_displacement_l2"],
            "conv_displacement_corrected": c["conv_displacement_l2"],
            "displacement_ratio": _ratio(f["conv_displacement_l2"], c["conv_displacement_l2"]),
            "applied_over_current_grad_norm_faithful": {
                "first": ratio[0],
                "middle": ratio[len(ratio) // 2],
                "last": ratio[-1],
            },
        }
    return out


def mechanism_summary(results: dict, image: np.ndarray, seed: int) -> dict:
    """Why zero init is stuck and a lone zero conv is not (step-0 gradients, the ReLU at 0)."""
    step0 = results["zeros/corrected"]["step0"]
    only2 = {v: results[f"zeros_only_conv2/{v}"] for v in VARIANTS}
    c5 = results["constant5/corrected"]
    return {
        "two_conv_zero_init_step0_grad_norms": {
            k: v for k, v in step0.items() if k.startswith("grad_norm/")
        },
        "last_relu": last_relu_check(),
        "single_conv": single_conv_gradient_check(image, seed),
        "only_conv2_conv2_max_abs_after_run": {v: r["conv2_max_abs"][-1] for v, r in only2.items()},
        "only_conv2_loss": {v: [r["loss"][0], r["loss"][-1]] for v, r in only2.items()},
        "constant5_step0": {
            "loss_minus_ln3": c5["loss"][0] - LN3,
            "grad_norms": {k: v for k, v in c5["step0"].items() if k.startswith("grad_norm/")},
        },
    }


def settings(args, image: np.ndarray, image_source: str, iterations: int) -> dict:
    sgd = f"vggjax.optim.make_optimizer(learning_rate={LR}, momentum={MOMENTUM}) (= torch SGD)"
    return {
        "model": "vggjax.models.reference.TwoConvBN "
        "(conv 3->3 3x3 pad 1 no bias, BN eps 1e-5, ReLU) x 2",
        "image": image_source,
        "image_shape_nhwc": list(image.shape),
        "label": f"every pixel = {LABEL}",
        "loss": "vggjax.losses.softmax_cross_entropy over the 3 channels, mean over pixels",
        "optimizer": f"{sgd}; faithful: optax.chain(accumulate_gradients(), sgd) = no zero_grad",
        "training": "vggjax.experiment.train (vggjax.training.fit), the same batch every step",
        "iterations": iterations,
        "quick": args.quick,
        "seed": args.seed,
        "recorded": "loss and kernel mean/var at each iteration BEFORE its update (as the seed "
        "logs them); var is the population variance (torch's is unbiased: x 81/80)",
        "data": "no dataset: one random image, as in the seed",
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    iterations = args.iterations or (10 if args.quick else 40)
    os.makedirs(args.out, exist_ok=True)
    image, image_source = load_image(args.image, args.seed)

    results = {}
    for name, variant in itertools.product(RUNS, VARIANTS):
        r = results[f"{name}/{variant}"] = run_case(name, variant, image, iterations, args.seed)
        print(f"{name:>17s} {variant:9s} loss {r['loss'][0]:.6f} -> {r['final_loss']:.6f}")

    z = [results[f"zeros/{v}"] for v in VARIANTS]
    zeros_check = {
        "max_abs_loss_minus_ln3": max(abs(v - LN3) for r in z for v in r["loss"]),
        "max_abs_conv_weight": max(max(r["conv1_max_abs"] + r["conv2_max_abs"]) for r in z),
        "max_grad_norm": max(max(r["grad_norm"]) for r in z),
        "step0_zero_frac": {k: v for k, v in z[1]["step0"].items() if k.startswith("zero_frac/")},
    }
    extra = {"torch_check": torch_check(results, image, iterations)} if args.torch_check else {}
    result = experiment.record(
        argv,
        experiment="init_study",
        claim="seed 004: zero init keeps a 2-conv BN net at loss ln 3 with both convs exactly 0; "
        "one conv alone learns; constant 5 and Kaiming train",
        settings=settings(args, image, image_source, iterations),
        zeros_check=zeros_check,
        mechanism=mechanism_summary(results, image, args.seed),
        accumulation=accumulation_summary(results),
        runs={k: {kk: vv for kk, vv in v.items() if kk != "_w0"} for k, v in results.items()},
        **extra,
        plots=[] if args.no_plots else plot(results, args.out),
    )
    result["seconds"] = round(time.time() - t0, 1)
    experiment.write_result(result, args.out)
    final = {k: round(v["final_loss"], 6) for k, v in results.items()}
    torch_ok = extra.get("torch_check", {}).get("all_allclose")
    print(json.dumps({"zeros_check": zeros_check, "final_loss": final, "torch_ok": torch_ok}))
    return result


if __name__ == "__main__":
    main()
