"""``python -m vggjax.bench --accelerator`` (``benchmarks/gpu.sh``): the train step on a GPU or TPU.

One process, one JSON record, no downloads, a few minutes:

* the trainer's step for vgg16_bn at 224×224 (``--arch``/``--size`` to change), batch 256
  (the VGG paper's; ``--batch``), in bfloat16 and in float32 compute under ``compute="auto"``
  (native XLA convolution and pooling on this platform), and in bfloat16 with the CPU
  formulations forced (``compute="cpu"``: the policy A/B);
* torchvision's model of the same name in PyTorch on the same GPU: channels_last, bf16
  autocast, eager and ``torch.compile``;
* all timed in turns (:func:`vggjax.bench.timing.time_interleaved`) after their compiles;
  for each: compile time, step time (median and spread), images/s, peak device memory,
  and for JAX the model FLOPs (the plain step's XLA count) and the MFU against the
  device's dense peak (:data:`PEAK_TFLOPS`).

Contenders are set up in :data:`ORDER` while the elapsed time is under ``--budget-s``; the
rest are recorded as skipped, so the record always comes back.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from typing import Any, Callable

# Dense (non-sparse) matmul peaks per chip in TFLOP/s, by device kind, for bfloat16 and for the
# float32 path XLA takes by default (TF32 tensor cores on Ampere and later GPUs; bf16 passes on
# TPU). From the vendors' data sheets (H100/H200 SXM: 989 bf16, 495 TF32; PCIe H100: 756 / 378).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.0, "float32": 494.7}),
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
    (
        "V100",
        {"bfloat16": 125.0, "float32": 15.7},
    ),  # no bf16: fp16 tensor cores (125); fp32 without TF32
    ("TPU v6 lite", {"bfloat16": 918.0, "float32": 918.0}),  # v6e
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),  # v5e
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
)

# Set-up order: what matters most first, so a tight budget drops the least.
ORDER = ("jax_bf16", "torch_eager_bf16", "jax_f32", "jax_bf16_cpu_policy", "torch_compile_bf16")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The dense peak of ``device_kind`` (``jax.devices()[0].device_kind``) for ``dtype``, or
    None if unknown."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks[dtype]
    return None


def _device_memory() -> dict[str, float]:
    """JAX's allocator statistics for device 0 in MiB (peak and current bytes in use), where
    the backend has them."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {
        k.replace("_bytes", "_mib"): v / 2**20
        for k, v in stats.items()
        if k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    }


def _jax_contender(args: argparse.Namespace, dtype: str, compute: str, cache_dir: str):
    from vggjax.bench import step

    config = step.bench_config(
        args.arch,
        args.size,
        args.batch,
        width=args.width,
        dtype=dtype,
        cache_dir=cache_dir,
        compute=compute,
    )
    one, record, finish = step.jax_step_setup(config)
    record.update(dtype=dtype, compute=compute, model_flops=step.model_flops(config))
    return one, record, finish


def _torch_contender(args: argparse.Namespace, compiled: bool):
    import torch

    from vggjax.bench.torch_step import torch_step_setup

    device = "cuda" if torch.cuda.is_available() else "cpu"
    one, record = torch_step_setup(
        args.arch,
        args.size,
        args.batch,
        compile=compiled,
        device=device,
        bf16=True,
        channels_last=True,
    )
    return one, record, None


def _setups(args: argparse.Namespace, cache_dir: str) -> dict[str, Callable[[], tuple]]:
    jax_side = {
        "jax_bf16": lambda: _jax_contender(args, "bfloat16", "auto", cache_dir),
        "jax_f32": lambda: _jax_contender(args, "float32", "auto", cache_dir),
        "jax_bf16_cpu_policy": lambda: _jax_contender(args, "bfloat16", "cpu", cache_dir),
    }
    torch_side = {
        "torch_eager_bf16": lambda: _torch_contender(args, False),
        "torch_compile_bf16": lambda: _torch_contender(args, True),
    }
    return {**jax_side, **torch_side}


def _skip_reason(name: str, args: argparse.Namespace, elapsed: float) -> str | None:
    if name.startswith("torch"):
        if args.width != 1.0:
            return "torchvision's model is full width; --width is not 1"
        if name.startswith("torch_compile") and args.no_torch_compile:
            return "--no-torch-compile"
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError as e:
            return f"PyTorch not installed ({e})"
    if elapsed > args.budget_s:
        return (
            f"time budget: {elapsed:.0f} s of --budget-s {args.budget_s:.0f} used before its set-up"
        )
    return None


def _finish(name: str, entry: dict[str, Any], finish, times: list[float], args, kind: str) -> None:
    from vggjax.bench import timing

    if finish is not None:
        entry.update(finish(times))
    else:
        entry.update(step=timing.step_stats(times, args.batch), step_times_s=times)
    dtype = entry.get("dtype", "bfloat16")
    peak = peak_tflops(kind, dtype)
    entry["peak_tflops"] = peak
    if "model_flops" in entry and peak:
        entry["mfu"] = entry["model_flops"] / entry["step"]["median_s"] / (peak * 1e12)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, time and record every contender; see the module docstring."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the device
    import tempfile

    import jax

    from vggjax.bench import timing

    backend = jax.default_backend()
    if backend == "cpu" and not args.allow_cpu:
        raise SystemExit(
            "error: --accelerator needs a GPU or TPU (jax.default_backend() is 'cpu'); "
            "for the CPU benchmark run python -m vggjax.bench without it"
        )
    args.size = 224 if args.size is None else args.size
    args.batch = 256 if args.batch is None else args.batch
    t_start = time.time()
    kind = jax.devices()[0].device_kind
    record: dict[str, Any] = {
        "command": "python -m vggjax.bench --accelerator " + " ".join(getattr(args, "argv", [])),
        "config": {
            **timing.run_config(args),
            "batch_note": "batch 256: the VGG paper's; "
            "the peak device memory of each contender is recorded",
        },
        "machine": timing.machine_info(),
        "git": timing.git_state(),
        "device_kind": kind,
        "peak_tflops_table": {k: v for k, v in PEAK_TFLOPS},
        "contenders": {},
        "skipped": {},
    }
    cache_dir = tempfile.mkdtemp(prefix="vggjax-accel-cache-")
    steps, finishers = {}, {}
    setups = _setups(args, cache_dir)
    for name in ORDER:
        reason = _skip_reason(name, args, time.time() - t_start)
        if reason:
            record["skipped"][name] = reason
            continue
        try:
            steps[name], record["contenders"][name], finishers[name] = setups[name]()
        except Exception as e:  # noqa: BLE001 - one failing contender must not lose the others' numbers
            record["skipped"][name] = f"{type(e).__name__}: {e}"[:2000]
            record.setdefault("tracebacks", {})[name] = traceback.format_exc()[-4000:]
    record["setup_s"] = time.time() - t_start
    times = timing.time_interleaved(steps, args.steps) if steps else {}
    record["timing"] = (
        f"interleaved: {', '.join(steps)} in turns, after {timing.WARMUP_ROUNDS} untimed rounds"
    )
    for name in steps:
        _finish(name, record["contenders"][name], finishers[name], times[name], args, kind)
    record["device_memory"] = _device_memory()
    _ratios(record)
    record["wall_s"] = time.time() - t_start
    return record


def _ratios(record: dict[str, Any]) -> None:
    c = record["contenders"]
    rate = lambda n: c[n]["step"]["images_per_s"] if n in c and "step" in c[n] else None  # noqa: E731
    out = {}
    for a, b in (
        ("jax_bf16", "torch_compile_bf16"),
        ("jax_bf16", "torch_eager_bf16"),
        ("jax_bf16", "jax_bf16_cpu_policy"),
        ("jax_bf16", "jax_f32"),
    ):
        if rate(a) and rate(b):
            out[f"{a}_vs_{b}"] = rate(a) / rate(b)
    record["ratios"] = out


def summary_lines(record: dict[str, Any]) -> list[str]:
    cfg = record["config"]
    lines = [
        f"{cfg['arch']} {cfg['size']}x{cfg['size']} batch {cfg['batch']} "
        f"on {record['device_kind']} ({record['wall_s']:.0f} s)"
    ]
    for name, e in record["contenders"].items():
        if "step" not in e:
            continue
        compile_s = e.get("compile_s", e.get("first_step_s", 0.0)) + e.get("trace_lower_s", 0.0)
        mem = e.get("peak_device_memory_mib") or sum(
            v
            for k, v in e.get("xla_memory", {}).items()
            if k in ("argument_size_mib", "output_size_mib", "temp_size_mib")
        )
        mfu = f", MFU {100 * e['mfu']:.0f}%" if "mfu" in e else ""
        lines.append(
            f"{name:22s} {e['step']['median_s'] * 1e3:7.1f} ms  "
            f"{e['step']['images_per_s']:8.0f} img/s{mfu}, "
            f"compile {compile_s:.0f} s, memory {mem / 1024:.1f} GiB"
        )
    for name, why in record["skipped"].items():
        lines.append(f"{name:22s} skipped: {why.splitlines()[0][:160]}")
    for k, v in record["ratios"].items():
        lines.append(f"{k}: {v:.2f}x")
    return lines
