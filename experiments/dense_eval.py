"""Dense evaluation: VGG-16 with its FC head as convolutions, at 400×400 (reference case 001).

Claims checked (numbers measured, nothing assumed):

1. ``fc_conv`` head ported from ``fc`` weights (``ConvHead.load_fc``), 400×400 input:
   pool5 is 12×12, so the 7×7 fc6-conv gives a 6×6 score map. Every cell equals the
   ``fc`` head applied to the matching 7×7 window of the full image's pool5 map (to
   1e-4 relative), and the model's output is the mean of the map (dense evaluation).
2. How far each cell is from the ``fc`` head run on the matching 224×224 *crop* of the
   image (offsets of 32 pixels): zero padding at the crop's border and receptive fields
   that reach past the crop make these differ; measured per cell and per pool5 position.
3. The seed's own net (``vgg16_fc_conv_400``: fc6 as a 12×12 conv) gives a 1×1 map; the
   final average pooling changes nothing (bitwise equality), and the 12×12 conv equals an
   FC layer over the flattened 12×12×512 map.
4. The seed's torchsummary table (333,502,275 / 318,787,587 / 14,714,688 parameters).

Weights are random (torchvision's VGG init); pretrained ImageNet weights cannot be
downloaded offline. Inputs are the two real photographs that ship with scikit-learn
(``china.jpg``, ``flower.jpg``, 427×640), centre-cropped to 400×400.

    python experiments/dense_eval.py            # full width (VGG-16 as published)
    python experiments/dense_eval.py --quick    # width 1/8, one image (the test suite)
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import vggjax
from vggjax import experiment
from vggjax.models.heads import FCHead
from vggjax.models.reference import vgg16_fc_conv_400

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
SEED_TOTALS = {"total": 333_502_275, "trainable": 318_787_587, "non_trainable": 14_714_688}
CROP, STRIDE = 224, 32  # VGG's training crop; VGG-16's total stride


# --------------------------------------------------------------------------- helpers


def parse_args(argv=None):
    p = experiment.parser(
        __doc__,
        experiment.results_dir(__file__),
        quick="width 1/8, one image (seconds; used by the tests)",
    )
    p.add_argument("--width", type=float, help="channel multiplier (default 1, 1/8 with --quick)")
    p.add_argument("--size", type=int, default=400, help="input side in pixels (400, the seed's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-batch", type=int, default=6, help="224×224 crops per forward pass")
    return p.parse_args(argv)


def load_images(size: int, n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` of scikit-learn's bundled photographs, centre-cropped to ``size``², ImageNet-normalised
    NHWC."""
    from sklearn.datasets import load_sample_image

    names = ["china.jpg", "flower.jpg"][:n]
    out = []
    for name in names:
        img = load_sample_image(name).astype(np.float32) / 255.0  # (427, 640, 3)
        h, w, _ = img.shape
        if min(h, w) < size:
            raise SystemExit(f"--size {size} is larger than the bundled photo ({h}x{w})")
        top, left = (h - size) // 2, (w - size) // 2
        out.append((img[top : top + size, left : left + size] - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(out), names


def rel_l2(a: np.ndarray, b: np.ndarray, axis=-1) -> np.ndarray:
    """``‖a − b‖₂ / ‖b‖₂`` along ``axis``."""
    return np.linalg.norm(a - b, axis=axis) / np.linalg.norm(b, axis=axis)


def rel_max(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a − b| / max|b|`` (the tolerance measure of the equality checks)."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


# --------------------------------------------------------------------------- experiment


def build_pair(width: float, seed: int):
    """A ``fc``-head VGG-16 and an ``fc_conv`` VGG-16 holding the very same weights."""
    fc_model = vggjax.vgg16(head="fc", width=width, init="torchvision", rngs=nnx.Rngs(seed))
    conv_model = vggjax.vgg16(
        head="fc_conv", width=width, init="torchvision", rngs=nnx.Rngs(seed + 1)
    )
    nnx.update(conv_model.features, nnx.state(fc_model.features))
    conv_model.head.load_fc(fc_model.head)
    fc_model.eval()  # dropout off: the comparisons are of deterministic functions
    conv_model.eval()
    return fc_model, conv_model


def dense_vs_windows_and_crops(fc_model, conv_model, images: np.ndarray, crop_batch: int) -> list:
    """Claims 1 and 2 for every image: score-map cells vs fc head on pool5 windows and on crops."""
    fwd = nnx.jit(lambda m, x: m(x, return_features=True))
    head_fwd = nnx.jit(lambda head, x: head(x, {}))
    return [one_image(fwd, head_fwd, fc_model, conv_model, img, crop_batch) for img in images]


def crops_through_fc(fwd, fc_model, img: np.ndarray, grid: tuple[int, int], crop_batch: int):
    """The fc net on the 224×224 crops at offsets 32·(i, j), batched: (logits, pool5, seconds)."""
    offsets = [(STRIDE * i, STRIDE * j) for i in range(grid[0]) for j in range(grid[1])]
    crops = np.stack([img[r : r + CROP, c : c + CROP] for r, c in offsets])
    logits, pool5, seconds = [], [], 0.0
    for s in range(0, len(crops), crop_batch):
        (lg, f), dt = timed(fwd, fc_model, jnp.asarray(crops[s : s + crop_batch]))
        logits.append(np.asarray(lg))
        pool5.append(np.asarray(f["pool5"]))
        seconds += dt
    return np.concatenate(logits), np.concatenate(pool5), seconds


def one_image(fwd, head_fwd, fc_model, conv_model, img: np.ndarray, crop_batch: int) -> dict:
    (logits, feats), t_full = timed(fwd, conv_model, jnp.asarray(img[None]))
    pool5 = np.asarray(feats["pool5"])[0]  # (12, 12, C)
    smap = np.asarray(feats["score_map"])[0]  # (6, 6, K)
    logits = np.asarray(logits)[0]
    gh, gw = smap.shape[:2]
    k = conv_model.head.kernel_size

    # 1. the fc head on each 7×7 window of the full image's pool5 map.
    windows = np.stack([pool5[i : i + k, j : j + k] for i in range(gh) for j in range(gw)])
    win_logits = np.asarray(head_fwd(fc_model.head, jnp.asarray(windows))).reshape(gh, gw, -1)
    each = [[rel_max(smap[i, j], win_logits[i, j]) for j in range(gw)] for i in range(gh)]

    # 2. the fc head on the matching 224×224 crops (offsets 32·(i, j)).
    crop_logits, crop_pool5, t_crops = crops_through_fc(fwd, fc_model, img, (gh, gw), crop_batch)
    crop_logits = crop_logits.reshape(gh, gw, -1)
    crop_pool5 = crop_pool5.reshape(gh, gw, k, k, -1)
    cell_vs_crop = rel_l2(smap, crop_logits)  # (6, 6)
    # pool5 of each crop vs the full image's window, per position inside the window.
    win5 = windows.reshape(gh, gw, k, k, -1)
    pool5_pos = rel_l2(crop_pool5, win5).mean(axis=(0, 1))  # (7, 7), mean over crops
    pool5_exact = np.mean(np.all(crop_pool5 == win5, axis=-1), axis=(0, 1))  # bit-equal share
    norms = np.linalg.norm(smap, axis=-1) * np.linalg.norm(crop_logits, axis=-1)
    cos = np.sum(smap * crop_logits, -1) / norms
    crop_mean = crop_logits.mean(axis=(0, 1))
    # The other answer in the seed: AdaptiveAvgPool(7, 7) + the fc head on the whole image.
    adaptive = np.asarray(head_fwd(fc_model.head, jnp.asarray(pool5[None])))[0]
    return {
        "pool5_shape": list(pool5.shape),
        "score_map_shape": list(smap.shape),
        "cell_vs_window_rel_max": rel_max(smap, win_logits),
        "cell_vs_window_rel_max_per_cell": each,
        "output_vs_map_mean_rel_max": rel_max(logits, smap.mean(axis=(0, 1))),
        "output_vs_window_mean_rel_max": rel_max(logits, win_logits.mean(axis=(0, 1))),
        "cell_vs_crop_rel_l2": cell_vs_crop.tolist(),
        "cell_vs_crop_rel_l2_min": float(cell_vs_crop.min()),
        "cell_vs_crop_rel_l2_median": float(np.median(cell_vs_crop)),
        "cell_vs_crop_rel_l2_max": float(cell_vs_crop.max()),
        "cell_vs_crop_cosine_mean": float(cos.mean()),
        "cell_vs_crop_cosine_min": float(cos.min()),
        "cell_vs_crop_top1_agreement": float(np.mean(smap.argmax(-1) == crop_logits.argmax(-1))),
        "pool5_crop_vs_window_rel_l2_by_position": pool5_pos.tolist(),
        "pool5_crop_vs_window_bit_equal_share_by_position": pool5_exact.tolist(),
        "dense_vs_crop_mean_rel_l2": float(rel_l2(logits, crop_mean)),
        "dense_vs_center_crop_rel_l2": float(rel_l2(logits, crop_logits[gh // 2, gw // 2])),
        "dense_vs_adaptive_pool_fc_rel_l2": float(rel_l2(logits, adaptive)),
        "dense_top1_equals_crop_mean_top1": bool(np.argmax(logits) == np.argmax(crop_mean)),
        "seconds_full_image_forward": t_full,  # the first image includes compilation
        "seconds_36_crops_forward": t_crops,
        "_arrays": {
            "smap": smap,
            "crop_logits": crop_logits,
            "pool5_pos": pool5_pos,
            "cell_vs_crop": cell_vs_crop,
        },
    }


def seed_net_12x12(width: float, seed: int, image: np.ndarray) -> dict:
    """Claim 3 on the seed's net: 1×1 score map, avg pooling is the identity, 12×12 conv: FC."""
    model = vgg16_fc_conv_400(width=width, rngs=nnx.Rngs(seed))
    model.eval()
    x = jnp.asarray(image[None])
    fwd = nnx.jit(lambda m, x: m(x, return_features=True))
    (logits, feats), t = timed(fwd, model, x)
    smap = np.asarray(feats["score_map"])
    logits = np.asarray(logits)
    explicit_mean = np.asarray(jnp.mean(jnp.asarray(smap), axis=(1, 2)))
    softmax_map = np.asarray(jax.nn.softmax(jnp.asarray(smap), axis=-1))[:, 0, 0]
    softmax_out = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    out = {
        "score_map_shape": list(smap.shape),
        "pool5_shape": list(feats["pool5"].shape),
        "output_equals_map_cell_bitwise": bool(np.array_equal(logits, smap[:, 0, 0])),
        "explicit_mean_equals_map_cell_bitwise": bool(np.array_equal(explicit_mean, smap[:, 0, 0])),
        "softmax_equal_bitwise": bool(np.array_equal(softmax_map, softmax_out)),
        "max_abs_diff_output_vs_map": float(np.max(np.abs(logits - smap[:, 0, 0]))),
        "logits": logits[0].tolist(),
        "seconds_forward": t,
    }
    # A 12×12 VALID conv on a 12×12 map is an FC layer over the flattened map: port one in.
    c = model.features.out_channels
    fc12 = FCHead(
        c,
        model.num_classes,
        hidden=model.head.fc6.out_features,
        dropout=0.0,
        pool_size=12,
        rngs=nnx.Rngs(seed + 7),
    )
    vggjax.initializers.apply(
        fc12, "torchvision", rngs=nnx.Rngs(seed + 7)
    )  # heads are drawn by their model
    model.head.load_fc(fc12)
    (logits2, feats2), _ = timed(fwd, model, x)
    fc_logits = np.asarray(nnx.jit(lambda h, p: h(p, {}))(fc12, feats2["pool5"]))
    out["conv12_vs_fc_on_flattened_map_rel_max"] = rel_max(np.asarray(logits2), fc_logits)
    return out


def parameter_table(out_dir: str) -> dict:
    """Claim 4: the torchsummary table of the seed net at full width (abstract: no arrays)."""
    abstract = nnx.eval_shape(lambda: vgg16_fc_conv_400(rngs=nnx.Rngs(0)))
    s = vggjax.summary.summarize(abstract, (1, 400, 400, 3))
    table = s.table()
    with open(os.path.join(out_dir, "summary_vgg16_fc_conv_400.txt"), "w") as f:
        f.write(table + "\n")
    got = {
        "total": s.total_params,
        "trainable": s.trainable_params,
        "non_trainable": s.non_trainable_params,
    }
    fc6 = next(r for r in s.rows if r.name == "fc6")
    abstract_vgg = nnx.eval_shape(lambda: vggjax.vgg16(head="fc_conv", rngs=nnx.Rngs(0)))
    flops_224 = vggjax.summary.summarize(
        nnx.eval_shape(lambda: vggjax.vgg16(rngs=nnx.Rngs(0))), (1, 224, 224, 3)
    ).flops
    flops_400 = vggjax.summary.summarize(abstract_vgg, (1, 400, 400, 3)).flops
    return {
        "table_file": "summary_vgg16_fc_conv_400.txt",
        "params": got,
        "seed_params": SEED_TOTALS,
        "matches_seed": got == SEED_TOTALS,
        "fc6_params": fc6.params,
        "fc6_output_shape": list(fc6.shape),
        "forward_mb": s.forward_backward_mb,
        "params_mb": s.params_mb,
        "flops_vgg16_fc_conv_400_forward": s.flops,
        "flops_vgg16_fc_224_forward": flops_224,
        "flops_vgg16_fc_conv_7x7_400_forward": flops_400,
        "table": table,
    }


def _heatmap(fig, ax, values: np.ndarray, cmap: str, title: str, dark_above: float = np.inf):
    im = ax.imshow(values, cmap=cmap)
    for (i, j), v in np.ndenumerate(values):
        color = "k" if v > dark_above else "w"
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=color, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)


def plot(per_image: list[dict], names: list[str], path: str, width: float) -> None:
    plt = experiment.pyplot()
    n = len(per_image)
    fig, axes = plt.subplots(n, 3, figsize=(15, 4.6 * n), squeeze=False)
    for row, (res, name) in enumerate(zip(per_image, names)):
        a = res["_arrays"]
        ax = axes[row, 0]
        title = f"{name}: ‖cell − fc(crop)‖ / ‖fc(crop)‖\n(6×6 score map vs 224² crop at 32·(i,j))"
        _heatmap(fig, ax, a["cell_vs_crop"], "viridis", title)
        ax.set(xlabel="j (crop left = 32·j px)", ylabel="i (crop top = 32·i px)")
        title = "pool5 of crop vs full-image window, per position\n"
        title += "(relative L2, mean over the 36 crops)"
        _heatmap(fig, axes[row, 1], a["pool5_pos"], "magma", title, 0.6 * a["pool5_pos"].max())
        ax = axes[row, 2]
        s, c = a["smap"].reshape(-1), a["crop_logits"].reshape(-1)
        ax.plot(c, s, ",", alpha=0.3)
        lim = [min(s.min(), c.min()), max(s.max(), c.max())]
        ax.plot(lim, lim, "r-", lw=0.8, label="y = x")
        ax.set(xlabel="fc head on the 224² crop (logit)", ylabel="score-map cell (logit)")
        ax.set_title(
            f"all 36 cells × {a['smap'].shape[-1]} classes; cells == fc(window) to "
            f"{res['cell_vs_window_rel_max']:.1e}",
            fontsize=9,
        )
        ax.legend(loc="upper left")
    fig.suptitle(
        f"Dense evaluation of VGG-16 (fc head ported to fc_conv), 400×400 input, width {width:g}, "
        "random weights"
    )
    experiment.save_figure(fig, path, dpi=90)


def checks(per_image: list[dict], seed12: dict, table: dict, size: int) -> dict:
    worst_window = max(r["cell_vs_window_rel_max"] for r in per_image)
    worst_mean = max(
        max(r["output_vs_map_mean_rel_max"], r["output_vs_window_mean_rel_max"]) for r in per_image
    )
    six = all(r["score_map_shape"][:2] == [6, 6] for r in per_image)
    return {
        "score_map_is_6x6": six if size == 400 else None,
        "cell_equals_fc_on_window_1e-4": worst_window < 1e-4,
        "output_is_map_mean_1e-4": worst_mean < 1e-4,
        "seed_net_1x1_avgpool_is_identity_bitwise": seed12["output_equals_map_cell_bitwise"]
        and seed12["explicit_mean_equals_map_cell_bitwise"],
        "seed_net_12x12_conv_equals_fc_1e-4": seed12["conv12_vs_fc_on_flattened_map_rel_max"]
        < 1e-4,
        "param_table_matches_seed": table["matches_seed"],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    width = args.width if args.width is not None else (0.125 if args.quick else 1.0)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    images, names = load_images(args.size, 1 if args.quick else 2)

    t = time.perf_counter()
    fc_model, conv_model = build_pair(width, args.seed)
    t_build = time.perf_counter() - t
    per_image = dense_vs_windows_and_crops(fc_model, conv_model, images, args.crop_batch)
    del fc_model, conv_model
    seed12 = seed_net_12x12(width, args.seed, images[0])
    table = parameter_table(args.out)
    plot(per_image, names, os.path.join(args.out, "dense_eval.png"), width)
    result = experiment.record(
        argv,
        experiment="dense_eval",
        quick=args.quick,
        width=width,
        input_size=args.size,
        seed=args.seed,
        weights="random (torchvision VGG init: conv kaiming_normal fan_out, linear N(0, 0.01), "
        "zero bias); pretrained ImageNet weights are not available offline",
        data={
            "images": names,
            "source": "scikit-learn bundled sample photographs "
            "(sklearn.datasets.load_sample_image), 427x640 RGB",
            "preprocessing": f"centre crop {args.size}x{args.size}, /255, ImageNet mean/std",
            "crops": f"{CROP}x{CROP} at offsets {STRIDE}*(i, j), i, j in 0..5 (36 per image)",
        },
        checks=checks(per_image, seed12, table, args.size),
        per_image=[{k: v for k, v in r.items() if k != "_arrays"} for r in per_image],
        seed_net_12x12=seed12,
        parameter_table=table,
        seconds={
            "build_models": t_build,
            "total": time.perf_counter() - t0,
            "note": "wall clock on shared CPU cores; forward timings of the first image include "
            "compilation",
        },
        plots=["dense_eval.png"],
    )
    experiment.write_result(result, args.out)
    print(json.dumps({"checks": result["checks"], "seconds": result["seconds"]}, indent=2))
    for r, name in zip(result["per_image"], names):
        print(
            f"{name}: cell vs window {r['cell_vs_window_rel_max']:.2e}; cell vs crop rel L2 min "
            f"{r['cell_vs_crop_rel_l2_min']:.3f} median {r['cell_vs_crop_rel_l2_median']:.3f} "
            f"max {r['cell_vs_crop_rel_l2_max']:.3f}; top-1 agreement "
            f"{r['cell_vs_crop_top1_agreement']:.2f}"
        )
    return result


if __name__ == "__main__":
    main()
