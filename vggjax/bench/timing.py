"""Timing and machine facts for ``python -m vggjax.bench``: step statistics, timing in
turns, page faults per step, the machine's matmul peak, and what was measured where."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from typing import Any, Callable, Sequence

import numpy as np

from vggjax.metrics import peak_rss_mib  # noqa: F401 - the trainer's, re-exported for the bench

PEAK_MATMUL_SIZE = 4096


def step_stats(seconds: Sequence[float], images: int) -> dict[str, float]:
    """Median / min / max / relative spread of per-step wall times, and images/s at the median."""
    arr = np.asarray(seconds, np.float64)
    med = float(np.median(arr))
    q25, q75 = np.percentile(arr, [25, 75])
    return {
        "median_s": med,
        "min_s": float(arr.min()),
        "max_s": float(arr.max()),
        "iqr_s": float(q75 - q25),
        "spread_pct": float(100.0 * (q75 - q25) / med) if med > 0 else 0.0,
        "images_per_s": images / med if med > 0 else 0.0,
        "steps": len(seconds),
    }


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Wall seconds of ``n`` calls of ``fn`` (which must block until its work is done)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


WARMUP_ROUNDS = 2  # untimed rounds before the timed steps


def time_interleaved(
    fns: dict[str, Callable[[], Any]], n: int, warmup: int = WARMUP_ROUNDS
) -> dict[str, list[float]]:
    """Wall seconds of ``n`` calls of each of ``fns``, taken in turns (A B C, B C A, C A B, ...).

    The machine is shared: a step timed minutes after another sees another load. In turns,
    every contender sees the same conditions, so their ratio holds even when the absolute
    times drift. ``warmup`` untimed rounds first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def with_host_counters(fn: Callable[[], Any]) -> tuple[Callable[[], Any], list[tuple[int, float]]]:
    """``fn`` wrapped to log each call's minor page faults and system CPU seconds (this process).

    Returns ``(wrapped, samples)``; every call of ``wrapped`` appends ``(faults, system_s)``.
    The kernel's work for the step (mapping and zeroing freshly allocated buffers) shows
    up here and not in any XLA or PyTorch profile.
    """
    samples: list[tuple[int, float]] = []

    def wrapped() -> Any:
        before = resource.getrusage(resource.RUSAGE_SELF)
        out = fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        samples.append((after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime))
        return out

    return wrapped, samples


def host_counter_stats(samples: Sequence[tuple[int, float]]) -> dict[str, float]:
    """Median minor page faults and system CPU seconds per call of :func:`with_host_counters`'
    samples."""
    faults, system = zip(*samples) if samples else ((0,), (0.0,))
    return {
        "page_faults_per_step": float(np.median(faults)),
        "system_cpu_s_per_step": float(np.median(system)),
    }


def git_state() -> dict[str, Any]:
    """The commit of the code being measured, and whether the working tree's code (the
    ``vggjax`` package and ``pyproject.toml``; not docs or result files) differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "vggjax",
                "pyproject.toml",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0:
        return {}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def run_config(args: Any) -> dict[str, Any]:
    """The model and timing options of a benchmark command line, first in its record's config."""
    return {
        "arch": args.arch,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "width": args.width,
    }


def machine_info() -> dict[str, Any]:
    """CPU model, ISA flags of interest, cores, memory, library versions, XLA flags."""
    import jax
    import jaxlib

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info["cpu_model"] = model
    info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    info["logical_cores"] = os.cpu_count()
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # psutil is optional
        pass
    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__}
    for name in ("flax", "optax", "torch", "torchvision", "tensorflow"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    info["versions"] = versions
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    info["jax_devices"] = [str(d) for d in jax.devices()]
    info["backend"] = jax.default_backend()
    info["device_kind"] = jax.devices()[0].device_kind
    return info


def matmul_peak(n: int = PEAK_MATMUL_SIZE, reps: int = 7) -> dict[str, float]:
    """The machine's fp32 matmul peak in GFLOP/s: the fastest of ``reps`` timed ``n×n @ n×n``
    in XLA."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = time_calls(lambda: f(a, b).block_until_ready(), reps)
    flops = 2.0 * n**3
    return {
        "n": n,
        "best_s": min(times),
        "median_s": float(np.median(times)),
        "gflops": flops / min(times) / 1e9,
        "gflops_median": flops / float(np.median(times)) / 1e9,
    }


# --- the JAX train step ----------------------------------------------------------------
