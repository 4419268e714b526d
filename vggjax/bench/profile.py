"""Per-layer profiles (each conv's and max pool's forward+backward in every formulation) and
the input pipeline alone — the measurements behind the CPU thresholds of
:class:`vggjax.ops.Policy`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vggjax.bench.timing import time_calls


def conv_layer_shapes(arch: str, size: int, batch: int, width: float = 1.0) -> list[dict[str, Any]]:
    """Every backbone conv of ``arch`` at input ``size``²: name and (N, H, W, C_in, C_out)."""
    from vggjax.models.vgg import ARCHS, CFGS, scale_width

    cfg, _ = ARCHS[arch]
    out, stage, idx, cin, hw = [], 1, 0, 3, size
    for v in CFGS[cfg]:
        if v == "M":
            stage, idx, hw = stage + 1, 0, hw // 2
            continue
        idx += 1
        cout = scale_width(v, width)
        out.append({"name": f"conv{stage}_{idx}", "shape": [batch, hw, hw, cin, cout]})
        cin = cout
    return out


def conv_profile(
    arch: str, size: int, batch: int, width: float = 1.0, reps: int = 5, compute: str = "auto"
) -> list[dict[str, Any]]:
    """Forward+backward time of each 3×3 conv layer of ``arch`` in every formulation of
    :mod:`vggjax.ops`.

    ``lax_conv`` (XLA's conv and its gradients), ``im2col`` (patches + one matmul),
    ``tapgrad`` (lax.conv forward and input gradient, kernel gradient as per-tap matmuls)
    and ``rows`` (im2col along the width, one matmul with the kernel rows side by side).

    Per layer: the input shape, its fwd+bwd FLOPs (3 × forward), the median seconds and
    GFLOP/s of each formulation, and which one the ``compute`` policy chooses for that
    shape on this backend.
    """
    import jax
    import jax.numpy as jnp

    from vggjax import ops
    from vggjax.ops import cpu, xla

    pads = ((1, 1), (1, 1))
    policy = ops.Policy.parse(compute)
    formulations = {
        "lax_conv": lambda x, k: xla.conv_nhwc(x, k, pads),
        "im2col": lambda x, k: cpu.im2col_conv(x, k, pads),
        "tapgrad": lambda x, k: cpu.tapgrad_conv(x, k, pads),
        "rows": lambda x, k: cpu.row_im2col_conv(x, k, pads),
    }
    rows = []
    for layer in conv_layer_shapes(arch, size, batch, width):
        n, h, w, c, o = layer["shape"]
        x = jax.random.normal(jax.random.key(0), (n, h, w, c), jnp.float32)
        k = jax.random.normal(jax.random.key(1), (3, 3, c, o), jnp.float32) * 0.05
        flops = 3 * 2 * n * h * w * 9 * c * o
        row = {
            **layer,
            "flops": flops,
            "chosen": ops.conv_formulation(
                policy, jax.default_backend(), (n, h, w, c), (3, 3, c, o), pads
            ),
        }
        for name, f in formulations.items():
            g = jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) ** 2) * 0.5, argnums=(0, 1)))
            jax.block_until_ready(g(x, k))
            t = float(np.median(time_calls(lambda: jax.block_until_ready(g(x, k)), reps)))
            row[f"{name}_s"] = t
            row[f"{name}_gflops"] = flops / t / 1e9
        rows.append(row)
    return rows


def pool_profile(
    arch: str, size: int, batch: int, width: float = 1.0, reps: int = 5
) -> list[dict[str, Any]]:
    """Forward+backward time of each 2×2 max pool of ``arch``: ``reduce_window`` vs
    argmax-and-select (:mod:`vggjax.ops`)."""
    import jax
    import jax.numpy as jnp

    from vggjax.ops import cpu, xla

    shapes, seen = [], set()
    for layer in conv_layer_shapes(arch, size, batch, width):
        n, h, w, _, o = layer["shape"]
        stage = layer["name"].split("_")[0][4:]
        shapes.append((f"pool{stage}", (n, h, w, o)))
    rows = []
    for name, shape in reversed(shapes):  # the last conv of each stage feeds its pool
        if name in seen:
            continue
        seen.add(name)
        x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
        row: dict[str, Any] = {"name": name, "shape": list(shape)}
        for label, f in (
            ("reduce_window", xla.max_pool),
            ("vggjax", cpu.max_pool),
        ):
            g = jax.jit(jax.grad(lambda x, f=f: jnp.sum(jnp.sin(f(x)))))
            jax.block_until_ready(g(x))
            row[f"{label}_s"] = float(
                np.median(time_calls(lambda: jax.block_until_ready(g(x)), reps))
            )
        rows.append(row)
    return sorted(rows, key=lambda r: r["name"])


# --- input pipeline --------------------------------------------------------------------


def pipeline_bench(
    size: int,
    batch: int,
    seconds: float = 3.0,
    warmup: int = 5,
    *,
    dataset: str = "vggjax_digits",
    channels: int | None = 3,
    data_dir: str | None = None,
) -> dict[str, float]:
    """Images/s of a dataset's training pipeline alone (the embedded digits by default: decode,
    resize to ``size``², augment, normalise, batch), pulled for ``seconds`` after ``warmup``
    batches."""
    from vggjax import data

    batches, _ = data.load(
        dataset,
        global_batch_size=batch,
        train=True,
        image_size=size,
        channels=channels,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
    )
    for _ in range(warmup):
        next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(batches)
        n += b["image"].shape[0]
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


# --- PyTorch ---------------------------------------------------------------------------
