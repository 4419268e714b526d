"""``python -m vggjax.bench``: train-step throughput, compile time, utilisation, input pipeline.

    python -m vggjax.bench                                   # vgg16_bn, 32×32, batch 64
    python -m vggjax.bench --size 112 --batch 8 --torch --out experiments/results/bench/vgg16_bn_112_b8.json
    python -m vggjax.bench --profile                         # + per-layer conv fwd+bwd timings

What it measures, in one process (and one helper subprocess):

* the trainer's own step (:func:`vggjax.train.make_train_step`: forward, loss, backward,
  optax SGD with momentum 0.9 and weight decay 5e-4, BatchNorm statistics; jitted with
  the state donated): trace+lower time, XLA compile time and first-step wall time with a
  *cold* persistent compilation cache, then the median and spread of ``--steps``
  steady-state steps (each timed to ``block_until_ready``) and images/s;
* the same first step in a fresh subprocess with the cache now *warm* (what a second
  ``python -m vggjax.train`` sees);
* the step's FLOPs from XLA's cost analysis and the achieved FLOP/s as a fraction of the
  machine's measured peak (the best of several timed 4096² fp32 matmuls), both for the
  FLOPs the step executes and for the *model* FLOPs (:func:`model_flops`: the plain
  step's count, the same whatever formulations run; model FLOPs / step time / peak is the
  MFU);
* peak resident memory and XLA's buffer sizes for the step;
* the input pipeline alone (embedded digits, resized to ``--size``, augmented) in images/s;
* with ``--torch``: torchvision's model of the same name with 10 classes, SGD momentum 0.9
  weight decay 5e-4, in PyTorch eager and under ``torch.compile``, and the ratios; the JAX
  and PyTorch steps are timed in turns (:func:`time_interleaved`), so load changes on a
  shared machine hit all of them alike;
* with ``--variant NAME:module.ATTR=value[,...]`` (repeatable): the JAX step traced again with
  some of :mod:`vggjax.conv`'s, :mod:`vggjax.layers`' or :mod:`vggjax.train`'s trace-time
  settings changed, timed in turns with the rest — the A/B behind a default;
* with ``--profile``: each conv layer's forward+backward time for ``lax.conv``, im2col+matmul,
  the per-tap kernel gradient and width-only im2col ("rows") at its shape (the measurement behind :mod:`vggjax.conv`),
  and each max pool's with ``reduce_window`` and with :func:`vggjax.layers.max_pool`.

The JSON record (``--out``) also holds the machine: CPU model and flags, cores, library
versions, XLA flags, and the load average at start and end (the numbers are only
comparable when the machine was otherwise idle).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only feeds the pipeline; keep its notice out

import numpy as np

from vggjax import hostmem

NUM_CLASSES = 10
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
PEAK_MATMUL_SIZE = 4096


# --- small helpers ---------------------------------------------------------------------


def _stats(seconds: Sequence[float], images: int) -> dict[str, float]:
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


def _time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Wall seconds of ``n`` calls of ``fn`` (which must block until its work is done)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


WARMUP_ROUNDS = 2  # untimed rounds before the timed steps


def time_interleaved(fns: dict[str, Callable[[], Any]], n: int, warmup: int = WARMUP_ROUNDS) -> dict[str, list[float]]:
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
    """Median minor page faults and system CPU seconds per call of :func:`with_host_counters`' samples."""
    faults, system = zip(*samples) if samples else ((0,), (0.0,))
    return {"page_faults_per_step": float(np.median(faults)), "system_cpu_s_per_step": float(np.median(system))}


def _peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _git_state() -> dict[str, Any]:
    """The commit of the code being measured, and whether the working tree's code (the
    ``vggjax`` package and ``pyproject.toml``; not docs or result files) differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "vggjax", "pyproject.toml"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0:
        return {}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


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
    return info


def matmul_peak(n: int = PEAK_MATMUL_SIZE, reps: int = 7) -> dict[str, float]:
    """The machine's fp32 matmul peak in GFLOP/s: the fastest of ``reps`` timed ``n×n @ n×n`` in XLA."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = _time_calls(lambda: f(a, b).block_until_ready(), reps)
    flops = 2.0 * n**3
    return {"n": n, "best_s": min(times), "median_s": float(np.median(times)), "gflops": flops / min(times) / 1e9,
            "gflops_median": flops / float(np.median(times)) / 1e9}


# --- the JAX train step ----------------------------------------------------------------


def bench_config(arch: str, size: int, batch: int, *, width: float = 1.0, dtype: str = "float32", cache_dir: str = ""):
    """The trainer config for the benchmark: ``arch`` with torchvision's fc head, 10 classes, SGD as torch.

    SGD lr 0.01, momentum 0.9, coupled weight decay 5e-4 on every parameter (torch
    ``SGD(weight_decay=5e-4)``), constant schedule; dropout 0.5; 3-channel ``size``² input.
    """
    from vggjax.configs import default

    config = default.get_config()
    config.model = arch
    config.model_options = {"width": width, "head": "fc", "head_options": {}, "init": "torchvision", "dropout": 0.5}
    config.image_size = size
    config.channels = 3
    config.batch_size = batch
    config.dtype = dtype
    config.optim.learning_rate = LEARNING_RATE
    config.optim.momentum = MOMENTUM
    config.optim.nesterov = False
    config.optim.weight_decay = WEIGHT_DECAY
    config.optim.weight_decay_mask = "all"
    config.optim.schedule = "constant"
    config.optim.warmup_epochs = 0.0
    config.compilation_cache = cache_dir
    return config


def _batch(size: int, batch: int, channels: int = 3) -> dict[str, Any]:
    """A fixed random batch in the trainer's format (NHWC float32 images, int32 labels, mask)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    host = {
        "image": rng.standard_normal((batch, size, size, channels), np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
    }
    return jax.device_put({k: jnp.asarray(v) for k, v in host.items()})


# --- trace-time settings: --plain and --variant ----------------------------------------

# The vggjax modules whose UPPER_CASE constants --variant may change. Each is read when the
# step is traced (a formulation threshold or switch), so a changed value gives another step.
SETTING_MODULES = ("conv", "layers", "train")

# Every fast path off (--plain): lax.conv everywhere, pool then fc6, reduce_window max pool,
# sum(square(g)) for the gradients' finiteness test. "A straightforward Flax NNX step".
PLAIN_SETTINGS: dict[str, Any] = {
    "conv.IM2COL_MAX_PIXELS": 0,
    "conv.IM2COL_MAX_ROWS": 0,
    "conv.ROW_IM2COL_MAX_OUT_CHANNELS": 0,
    "conv.IM2COL_MAX_IN_CHANNELS": 0,
    "conv.TAPGRAD_MIN_PIXELS": 1 << 62,
    "layers.FOLD_POOLED_LINEAR": False,
    "layers.FAST_MAX_POOL": False,
    "train.SQUARES_BY_DOT": False,
}

VARIANT_FORMAT = "NAME:module.ATTR=value[,module.ATTR=value...], e.g. old_tapgrad:conv.TAPGRAD_MIN_PIXELS=256"


def _setting_target(key: str) -> tuple[Any, str]:
    """``("conv.TAPGRAD_MIN_PIXELS")`` -> (the vggjax.conv module, "TAPGRAD_MIN_PIXELS"); SystemExit if unknown."""
    import importlib

    module, _, attr = key.partition(".")
    if module not in SETTING_MODULES or not attr.isupper():
        raise SystemExit(f"error: {key!r} is not a setting: use module.ATTR with module one of {', '.join(SETTING_MODULES)} "
                         "and ATTR one of its UPPER_CASE constants")
    mod = importlib.import_module(f"vggjax.{module}")
    if not hasattr(mod, attr):
        known = ", ".join(sorted(a for a in vars(mod) if a.isupper() and not a.startswith("_")))
        raise SystemExit(f"error: vggjax.{module} has no setting {attr}; it has: {known}")
    return mod, attr


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME:module.ATTR=value,..."`` (``--variant``) -> ``(NAME, {"module.ATTR": value})``.

    Values are Python literals of the setting's current type (an int where an int is, a
    bool where a bool is); anything else is a one-line SystemExit that says the format.
    """
    import ast

    name, sep, body = spec.partition(":")
    if not sep or not name.isidentifier() or not body:
        raise SystemExit(f"error: --variant {spec!r}: expected {VARIANT_FORMAT}")
    settings: dict[str, Any] = {}
    for item in body.split(","):
        key, eq, text = item.partition("=")
        if not eq:
            raise SystemExit(f"error: --variant {spec!r}: {item!r} has no '='; expected {VARIANT_FORMAT}")
        mod, attr = _setting_target(key.strip())
        current = getattr(mod, attr)
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise SystemExit(f"error: --variant {spec!r}: {text.strip()!r} is not a literal; "
                             f"{key.strip()} is {type(current).__name__} (now {current!r})") from None
        if type(value) is not type(current) and not (type(current) is float and type(value) is int):
            raise SystemExit(f"error: --variant {spec!r}: {key.strip()} is {type(current).__name__} (now {current!r}), "
                             f"got {type(value).__name__} {value!r}")
        settings[key.strip()] = value
    return name, settings


@contextlib.contextmanager
def trace_settings(settings: dict[str, Any]):
    """Set vggjax's trace-time ``settings`` ({"module.ATTR": value}) inside the block, then restore them."""
    old = {}
    try:
        for key, value in settings.items():
            mod, attr = _setting_target(key)
            old[key] = (mod, attr, getattr(mod, attr))
            setattr(mod, attr, value)
        yield
    finally:
        for mod, attr, value in old.values():
            setattr(mod, attr, value)


def use_plain_formulations() -> None:
    """Turn off every fast path for the rest of the process (``--plain``): :data:`PLAIN_SETTINGS`.

    Trace-time switches, so call it before the step is traced (and pass ``--plain`` to the warm probe).
    """
    for key, value in PLAIN_SETTINGS.items():
        mod, attr = _setting_target(key)
        setattr(mod, attr, value)


def model_flops(config) -> float:
    """The model FLOPs of one train step: XLA's cost analysis of the *plain* step (:data:`PLAIN_SETTINGS`).

    The step as a straightforward program — ``lax.conv`` convolutions, pool then the full
    fc6 matmul — lowered (not compiled, on abstract shapes) and counted before XLA
    optimizes it. It is the same number whatever formulations the timed step uses, so it is
    what a model-FLOPs utilisation (MFU) divides by; the executed step's own count
    (``flops``) moves with them (im2col multiplies padding taps, the fc6 fold skips 48 of
    49 identical rows). XLA counts convolutions without their padding taps.
    """
    import jax

    with trace_settings(PLAIN_SETTINGS):
        step_fn, make_state = _step_fn(config)
        state = jax.eval_shape(make_state)
        batch = jax.eval_shape(lambda: _batch(config.image_size, config.batch_size, config.channels))
        return _cost(jax.jit(step_fn).lower(state, batch))["flops"]


def _step_fn(config) -> tuple[Callable, Callable]:
    """``(step_fn, make_state)``: the trainer's pure train step for ``config`` and its state's initializer."""
    from vggjax import optim, train

    tx = optim.make_optimizer(config.optim, steps_per_epoch=1, total_steps=1_000_000)
    graphdef, _, make_state = train.init_state(config, NUM_CLASSES, config.channels, tx)
    return train.make_train_step(graphdef, tx, "softmax_cross_entropy"), make_state


def build_step(config) -> tuple[Callable, Any]:
    """``(jitted_step, state)``: the trainer's step for ``config``, jitted with the state donated.

    The traced-step cache (:mod:`vggjax.stepcache`) keys the step by the trace-time
    settings in force when it is first traced, so a ``--variant`` gets its own entry.
    """
    import jax

    from vggjax import stepcache

    step_fn, make_state = _step_fn(config)
    state = jax.jit(make_state)()
    key = json.dumps({"bench": config.to_dict(), "loss": "softmax_cross_entropy", "classes": NUM_CLASSES}, sort_keys=True, default=str)
    step = stepcache.CachedStep(step_fn, key=key, cache_dir=config.get("compilation_cache", ""), donate_state=True)
    return step, state


def compile_step(config) -> dict[str, Any]:
    """Build, lower and compile the step; time each part and the first execution.

    Returns ``{"trace_lower_s", "compile_s", "first_run_s", "first_step_s", "compiled",
    "state", "batch"}``; ``first_step_s`` = trace+lower + compile + first run (what the
    first call of a jitted step costs). The persistent cache is enabled first when
    ``config.compilation_cache`` is set (as the trainer does).
    """
    import jax

    from vggjax import train

    train.enable_compilation_cache(config.get("compilation_cache", ""))
    step, state = build_step(config)
    batch = _batch(config.image_size, config.batch_size, config.channels)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    t3 = time.perf_counter()
    return {
        "trace_lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "first_run_s": t3 - t2,
        "first_step_s": t3 - t0,
        "compiled": compiled,
        "state": state,
        "batch": batch,
        "loss": float(metrics["loss"]),
    }


def _cost(compiled) -> dict[str, float]:
    """FLOPs and bytes accessed of a compiled executable (XLA cost analysis)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def _memory(compiled) -> dict[str, float]:
    """XLA's buffer sizes for the executable, in MiB."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if m is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {f.replace("_in_bytes", "_mib"): getattr(m, f, 0) / 2**20 for f in fields}


def op_profile(compiled, state: Any, batch: Any, steps: int = 3, top: int = 25) -> tuple[dict[str, Any], Any]:
    """Time of every XLA op in ``steps`` executions of ``compiled`` (jax.profiler), per step.

    Sums the trace events of XLA:CPU's worker threads by op name (thunk names such as
    ``ynn_fusion.3`` or ``multiply_add_fusion.35``) and by kind (the name without its
    number), and gives each top op's shape and JAX source op from the compiled HLO — the
    view that found fc6's kernel-sized copies and boolean reductions. Ops on the two
    threads overlap, so the total exceeds the wall time. Returns ``(profile, state)``
    (the state is donated to each step, so the caller continues with the returned one).
    """
    import collections
    import re

    import jax

    trace_dir = tempfile.mkdtemp(prefix="vggjax-op-profile-")
    try:
        jax.profiler.start_trace(trace_dir)
        try:
            for _ in range(steps):
                state, metrics = compiled(state, batch)
                jax.block_until_ready((state, metrics))
        finally:
            jax.profiler.stop_trace()
        files = [os.path.join(d, f) for d, _, fs in os.walk(trace_dir) for f in fs if f.endswith(".xplane.pb")]
        data = jax.profiler.ProfileData.from_file(sorted(files)[-1])
        per_op: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLAEigen"):
                    continue
                for ev in line.events:
                    if "::" not in ev.name and not ev.name.startswith("end: "):
                        per_op[ev.name] += ev.duration_ns
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    hlo = {}
    for text_line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+)", text_line)
        if m:
            src = re.search(r'op_name="([^"]*)"', text_line)
            hlo[m.group(1)] = {"shape": m.group(2), "source": src.group(1) if src else ""}
    kinds: collections.Counter = collections.Counter()
    for name, ns in per_op.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ns
    ms = lambda ns: ns / 1e6 / steps  # noqa: E731
    profile = {
        "steps": steps,
        "total_op_ms_per_step": ms(sum(per_op.values())),
        "by_kind_ms_per_step": {k: ms(v) for k, v in kinds.most_common(15)},
        "top_ops": [{"op": k, "ms_per_step": ms(v), **hlo.get(k, {})} for k, v in per_op.most_common(top)],
    }
    return profile, state


def jax_step_setup(config) -> tuple[Callable[[], None], dict[str, Any], Callable[..., dict[str, Any]]]:
    """Compile (cold cache) the train step of ``config``: ``(one_step, record, finish)``.

    The step is traced here, so a ``--variant``'s settings are set around the call.

    ``one_step()`` runs one blocking step; ``record`` holds the compile times and loss;
    ``finish(times, with_op_profile)`` adds the step statistics, XLA cost and memory
    analysis, the optional :func:`op_profile` and peak RSS to it and returns it.
    """
    import jax

    c = compile_step(config)
    compiled, batch = c["compiled"], c["batch"]
    holder = {"state": c["state"]}

    def one() -> None:
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    out = {k: c[k] for k in ("trace_lower_s", "compile_s", "first_run_s", "first_step_s", "loss")}

    def finish(times: list[float], with_op_profile: bool = False) -> dict[str, Any]:
        out["step"] = _stats(times, config.batch_size)
        out["step_times_s"] = times
        out.update(_cost(compiled))
        out["xla_memory"] = _memory(compiled)
        if with_op_profile:
            out["op_profile"], holder["state"] = op_profile(compiled, holder["state"], batch)
        out["peak_rss_mib"] = _peak_rss_mib()
        return out

    return one, out, finish


def warm_cache_probe(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    """Run ``python -m vggjax.bench --first-step-only`` in a fresh process against ``cache_dir``.

    The cache was filled by this process's cold compile, so the child measures the
    first step a second training run would see. Returns the child's JSON (or an error).
    """
    cmd = [
        sys.executable, "-m", "vggjax.bench", "--first-step-only", "--cache-dir", cache_dir,
        "--arch", args.arch, "--size", str(args.size), "--batch", str(args.batch),
        "--width", str(args.width), "--dtype", args.dtype,
    ] + (["--plain"] if args.plain else []) + (["--no-hugepages"] if args.no_hugepages else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])


# --- per-layer conv profile ------------------------------------------------------------


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


def conv_profile(arch: str, size: int, batch: int, width: float = 1.0, reps: int = 5) -> list[dict[str, Any]]:
    """Forward+backward time of each 3×3 conv layer of ``arch`` in every formulation of :mod:`vggjax.conv`.

    ``lax_conv`` (XLA's conv and its gradients), ``im2col`` (patches + one matmul),
    ``tapgrad`` (lax.conv forward and input gradient, kernel gradient as per-tap matmuls)
    and ``rows`` (im2col along the width, one matmul with the kernel rows side by side).

    Per layer: the input shape, its fwd+bwd FLOPs (3 × forward), the median seconds and
    GFLOP/s of each formulation, and which one :mod:`vggjax.conv` chooses for that shape.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    from vggjax import conv as conv_lib

    pads = ((1, 1), (1, 1))
    formulations = {
        "lax_conv": lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        "im2col": lambda x, k: conv_lib.im2col_conv(x, k, pads),
        "tapgrad": lambda x, k: conv_lib.tapgrad_conv(x, k, pads),
        "rows": lambda x, k: conv_lib.row_im2col_conv(x, k, pads),
    }
    rows = []
    for layer in conv_layer_shapes(arch, size, batch, width):
        n, h, w, c, o = layer["shape"]
        x = jax.random.normal(jax.random.key(0), (n, h, w, c), jnp.float32)
        k = jax.random.normal(jax.random.key(1), (3, 3, c, o), jnp.float32) * 0.05
        flops = 3 * 2 * n * h * w * 9 * c * o
        row = {**layer, "flops": flops, "chosen": conv_lib.choose((h, w), (3, 3), pads, c, o, n)}
        for name, f in formulations.items():
            g = jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) ** 2) * 0.5, argnums=(0, 1)))
            jax.block_until_ready(g(x, k))
            t = float(np.median(_time_calls(lambda: jax.block_until_ready(g(x, k)), reps)))
            row[f"{name}_s"] = t
            row[f"{name}_gflops"] = flops / t / 1e9
        rows.append(row)
    return rows


def pool_profile(arch: str, size: int, batch: int, width: float = 1.0, reps: int = 5) -> list[dict[str, Any]]:
    """Forward+backward time of each 2×2 max pool of ``arch``: ``nnx.max_pool`` (reduce_window) vs :func:`vggjax.layers.max_pool`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vggjax import layers

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
            ("reduce_window", lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")),
            ("vggjax", layers.max_pool),
        ):
            g = jax.jit(jax.grad(lambda x, f=f: jnp.sum(jnp.sin(f(x)))))
            jax.block_until_ready(g(x))
            row[f"{label}_s"] = float(np.median(_time_calls(lambda: jax.block_until_ready(g(x)), reps)))
        rows.append(row)
    return sorted(rows, key=lambda r: r["name"])


# --- input pipeline --------------------------------------------------------------------


def pipeline_bench(size: int, batch: int, seconds: float = 3.0, warmup: int = 5) -> dict[str, float]:
    """Images/s of the embedded-digits training pipeline alone (resize to ``size``², augment, normalise, batch)."""
    from vggjax import data

    batches, _ = data.load(
        "vggjax_digits", global_batch_size=batch, train=True, image_size=size, channels=3,
        process_index=0, process_count=1,
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


def torch_step_setup(arch: str, size: int, batch: int, *, compile: bool) -> tuple[Callable[[], None], dict[str, Any]]:
    """The same step in PyTorch: ``torchvision.models.<arch>(num_classes=10)``, SGD(0.01, 0.9, wd 5e-4).

    NCHW float32 input, cross-entropy, ``zero_grad(set_to_none=True)`` → forward →
    backward → ``optimizer.step()``. With ``compile`` the model is wrapped in
    ``torch.compile`` (default mode). Runs the first step (its time includes
    compilation) and returns ``(one_step, {"first_step_s", "threads"})``.
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    run = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    one()
    return one, {"first_step_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}


# --- main ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vggjax.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vgg16_bn", help="a vggjax/torchvision VGG name (default vgg16_bn)")
    p.add_argument("--size", type=int, default=32, help="input height = width (default 32)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--steps", type=int, default=10, help="steady-state steps timed (default 10)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of the JAX model (tiny runs)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="JAX compute dtype")
    p.add_argument("--plain", action="store_true", help="lax.conv everywhere and no fc6 fold (the baseline)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:module.ATTR=value[,...]",
                   help="also time the JAX step traced with these vggjax settings changed (an A/B, in turns "
                        "with the others), e.g. old_tapgrad:conv.TAPGRAD_MIN_PIXELS=256; repeatable")
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager and torch.compile")
    p.add_argument("--no-torch-compile", action="store_true", help="with --torch: eager only")
    p.add_argument("--profile", action="store_true", help="per-layer conv fwd+bwd timing, lax.conv vs im2col")
    p.add_argument("--op-profile", action="store_true", help="time of every XLA op in the step (jax.profiler)")
    p.add_argument("--no-warm-probe", action="store_true", help="skip the warm-cache first step in a subprocess")
    p.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline measurement")
    p.add_argument("--pipeline-seconds", type=float, default=3.0, help="how long to pull batches (default 3 s)")
    p.add_argument("--peak-size", type=int, default=PEAK_MATMUL_SIZE, help="matmul size for the peak (default 4096)")
    p.add_argument("--no-hugepages", action="store_true",
                   help="do not restart with glibc.malloc.hugetlb=1 (see vggjax.hostmem; for the A/B)")
    p.add_argument("--cache-dir", default="", help="persistent compilation cache (default: a fresh temp dir, i.e. cold)")
    p.add_argument("--first-step-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help="write the JSON record here")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown results table of these records and exit")
    p.add_argument("--plot", default="", metavar="PNG", help="with --table: also draw the step times of the records")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement ``args`` asks for and return the JSON-able record."""
    if args.torch and args.width != 1.0:
        raise SystemExit("error: --torch compares against torchvision's full-width model; use --width 1")
    variants = [parse_variant(spec) for spec in args.variant]  # bad specs fail before anything is compiled
    if len({name for name, _ in variants}) < len(variants):
        raise SystemExit("error: --variant names must differ")
    load_start = os.getloadavg()
    t_start = time.time()
    info = machine_info()
    info["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    own_cache = not args.cache_dir
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="vggjax-bench-cache-")
    try:
        config = bench_config(args.arch, args.size, args.batch, width=args.width, dtype=args.dtype, cache_dir=cache_dir)
        record: dict[str, Any] = {
            "command": "python -m vggjax.bench " + " ".join(sys.argv[1:]),
            "config": {"arch": args.arch, "size": args.size, "batch": args.batch, "steps": args.steps, "width": args.width,
                       "dtype": args.dtype, "formulations": "plain" if args.plain else "default", "head": "fc", "num_classes": NUM_CLASSES, "optimizer":
                       f"SGD lr {LEARNING_RATE} momentum {MOMENTUM} weight_decay {WEIGHT_DECAY} (coupled)"},
            "machine": info,
            "git": _git_state(),
            "load_avg_start": list(load_start),
        }
        one_jax, jx, finish_jax = jax_step_setup(config)
        record["jax"] = jx
        contenders = {"jax": one_jax}
        finish_variant = {}
        for name, settings in variants:
            with trace_settings(settings):
                contenders[f"jax:{name}"], vx, finish_variant[name] = jax_step_setup(config)
            record.setdefault("variants", {})[name] = {"settings": settings, **vx}
        if args.torch:
            for name, compiled in (("torch_eager", False), ("torch_compile", True)):
                if compiled and args.no_torch_compile:
                    continue
                contenders[name], record[name] = torch_step_setup(args.arch, args.size, args.batch, compile=compiled)
        counted, host_samples = {}, {}
        for name, fn in contenders.items():
            counted[name], host_samples[name] = with_host_counters(fn)
        # All steps timed in turns (see time_interleaved): the ratios compare like with like.
        times = time_interleaved(counted, args.steps)
        record["timing"] = "interleaved: " + ", ".join(contenders) + f" in turns, after {WARMUP_ROUNDS} untimed rounds"
        finish_jax(times["jax"], args.op_profile)
        for name, finish in finish_variant.items():
            v = record["variants"][name]
            v.update(finish(times[f"jax:{name}"]))
            v["speed_vs_default"] = jx["step"]["median_s"] / v["step"]["median_s"]
        for name in contenders:
            entry = record["variants"][name[4:]] if name.startswith("jax:") else record[name]
            if name.startswith("torch"):
                entry.update(step=_stats(times[name], args.batch), step_times_s=times[name])
            entry["host"] = host_counter_stats(host_samples[name][-args.steps:])  # not the warm-up rounds
        if not args.no_warm_probe:
            jx["warm_cache"] = warm_cache_probe(args, cache_dir)
        peak = matmul_peak(args.peak_size)
        record["matmul_peak"] = peak
        achieved = jx["flops"] / jx["step"]["median_s"] / 1e9
        jx["model_flops"] = model_flops(config)
        model_rate = jx["model_flops"] / jx["step"]["median_s"] / 1e9
        record["utilisation"] = {"step_gflops": achieved, "peak_gflops": peak["gflops"],
                                 "fraction_of_peak": achieved / peak["gflops"],
                                 "model_step_gflops": model_rate, "model_fraction_of_peak": model_rate / peak["gflops"]}
        if not args.no_pipeline:
            pipe = pipeline_bench(args.size, args.batch, args.pipeline_seconds)
            pipe["ratio_to_train_step"] = pipe["images_per_s"] / jx["step"]["images_per_s"]
            record["input_pipeline"] = pipe
        if args.profile:
            record["conv_profile"] = conv_profile(args.arch, args.size, args.batch, args.width)
            record["pool_profile"] = pool_profile(args.arch, args.size, args.batch, args.width)
        if args.torch:
            record["ratios"] = {f"jax_vs_{name}": jx["step"]["images_per_s"] / record[name]["step"]["images_per_s"]
                                for name in contenders if name.startswith("torch")}
        record["peak_rss_mib"] = _peak_rss_mib()
        record["load_avg_end"] = list(os.getloadavg())
        record["wall_s"] = time.time() - t_start
        return record
    finally:
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)


def _first_step_only(args: argparse.Namespace) -> dict[str, Any]:
    """The warm-cache probe: build and run one step against ``--cache-dir``; times only."""
    config = bench_config(args.arch, args.size, args.batch, width=args.width, dtype=args.dtype, cache_dir=args.cache_dir)
    c = compile_step(config)
    return {k: c[k] for k in ("trace_lower_s", "compile_s", "first_run_s", "first_step_s")}


def summary_lines(record: dict[str, Any]) -> list[str]:
    """A short human-readable summary of a bench ``record``."""
    cfg, jx = record["config"], record["jax"]
    lines = [
        f"{cfg['arch']} {cfg['size']}x{cfg['size']} batch {cfg['batch']} ({cfg['dtype']}) on {record['machine']['cpu_model']}, "
        f"load {record['load_avg_start'][0]:.2f} -> {record['load_avg_end'][0]:.2f}",
        f"jax step: {jx['step']['median_s'] * 1e3:.0f} ms median (spread {jx['step']['spread_pct']:.0f}%), "
        f"{jx['step']['images_per_s']:.1f} img/s; first step {jx['first_step_s']:.1f} s "
        f"(trace+lower {jx['trace_lower_s']:.2f} s, compile {jx['compile_s']:.2f} s)",
    ]
    warm = jx.get("warm_cache")
    if warm and "error" not in warm:
        lines.append(f"warm cache: first step {warm['first_step_s']:.2f} s (trace+lower {warm['trace_lower_s']:.2f} s, "
                     f"compile/load {warm['compile_s']:.2f} s, run {warm['first_run_s']:.2f} s)")
    u = record["utilisation"]
    lines.append(f"{jx['flops'] / 1e9:.1f} GFLOP/step executed -> {u['step_gflops']:.1f} GFLOP/s = {100 * u['fraction_of_peak']:.0f}% "
                 f"of the measured {u['peak_gflops']:.0f} GFLOP/s matmul peak; peak RSS {jx['peak_rss_mib']:.0f} MiB")
    if "model_flops" in jx:
        lines.append(f"{jx['model_flops'] / 1e9:.1f} GFLOP/step model (the plain step's count) -> {u['model_step_gflops']:.1f} "
                     f"GFLOP/s = {100 * u['model_fraction_of_peak']:.0f}% of peak (MFU)")
    if "input_pipeline" in record:
        p = record["input_pipeline"]
        lines.append(f"input pipeline: {p['images_per_s']:.0f} img/s ({p['ratio_to_train_step']:.1f}x the train step)")
    for name in ("torch_eager", "torch_compile"):
        if name in record:
            t = record[name]
            lines.append(f"{name}: {t['step']['median_s'] * 1e3:.0f} ms median, {t['step']['images_per_s']:.1f} img/s, "
                         f"first step {t['first_step_s']:.1f} s")
    for k, v in record.get("ratios", {}).items():
        lines.append(f"{k}: {v:.2f}x")
    for name, v in record.get("variants", {}).items():
        settings = ", ".join(f"{k}={val!r}" for k, val in v["settings"].items())
        lines.append(f"variant {name} ({settings}): {v['step']['median_s'] * 1e3:.0f} ms median, "
                     f"{v['speed_vs_default']:.2f}x the default step's speed")
    for row in record.get("conv_profile", []):
        n, h, w, c, o = row["shape"]
        lines.append(f"  {row['name']:8s} {n}x{h}x{w}x{c}->{o}: lax.conv {row['lax_conv_s'] * 1e3:7.1f} ms "
                     f"({row['lax_conv_gflops']:5.0f} GF/s)  im2col {row['im2col_s'] * 1e3:7.1f} ms "
                     f"({row['im2col_gflops']:5.0f} GF/s)  tapgrad {row['tapgrad_s'] * 1e3:7.1f} ms  "
                     f"rows {row.get('rows_s', float('nan')) * 1e3:7.1f} ms  -> {row['chosen']}")
    ops = record["jax"].get("op_profile")
    if ops:
        lines.append(f"XLA ops, {ops['total_op_ms_per_step']:.0f} ms per step summed over threads; top:")
        for op in ops["top_ops"][:10]:
            lines.append(f"  {op['ms_per_step']:7.1f} ms  {op['op']:28s} {op.get('shape', '')[:40]:40s} {op.get('source', '')[:60]}")
    for row in record.get("pool_profile", []):
        lines.append(f"  {row['name']:8s} {'x'.join(map(str, row['shape']))}: reduce_window {row['reduce_window_s'] * 1e3:6.1f} ms"
                     f"  vggjax.layers.max_pool {row['vggjax_s'] * 1e3:6.1f} ms")
    return lines


def record_label(record: dict[str, Any], batch_word: str = "batch ") -> str:
    """``vgg16_bn 32×32 batch 64``, plus ``plain`` (no fast paths) and ``4 KiB pages`` (run
    without ``glibc.malloc.hugetlb=1``; records older than that setting carry no mark)."""
    c = record["config"]
    label = f"{c['arch']} {c['size']}×{c['size']} {batch_word}{c['batch']}"
    if c.get("formulations") == "plain":
        label += " plain"
    tunables = record.get("machine", {}).get("glibc_tunables")
    if tunables is not None and hostmem.TUNABLE not in tunables:
        label += " 4 KiB pages"
    return label


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The README's results table: one row per bench ``record`` (as written by ``--out``)."""

    def ms(x: float) -> str:
        return f"{x * 1e3:.0f} ms"

    head = (
        "| config | vggjax step (median, spread) | img/s | PyTorch eager | torch.compile | vs eager | vs compile "
        "| GFLOP/step model / executed | % of matmul peak: model (MFU) / executed | compile cold / warm-cache "
        "| input pipeline | peak RSS | load avg start→end |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in records:
        jx, u = r["jax"], r["utilisation"]
        te, tc, ratios = r.get("torch_eager"), r.get("torch_compile"), r.get("ratios", {})
        warm = jx.get("warm_cache", {})
        warm_s = f"{warm['trace_lower_s'] + warm['compile_s']:.2f} s" if "compile_s" in warm else "–"
        pipe = r.get("input_pipeline")
        rows.append(
            "| " + " | ".join([
                record_label(r),
                f"{ms(jx['step']['median_s'])} (±{jx['step']['spread_pct']:.0f}%)",
                f"{jx['step']['images_per_s']:.1f}",
                f"{ms(te['step']['median_s'])}" if te else "–",
                f"{ms(tc['step']['median_s'])} ({tc['first_step_s']:.0f} s 1st step)" if tc else "–",
                f"{ratios['jax_vs_torch_eager']:.2f}×" if "jax_vs_torch_eager" in ratios else "–",
                f"{ratios['jax_vs_torch_compile']:.2f}×" if "jax_vs_torch_compile" in ratios else "–",
                (f"{jx['model_flops'] / 1e9:.1f} / " if "model_flops" in jx else "– / ") + f"{jx['flops'] / 1e9:.1f}",
                (f"{100 * u['model_fraction_of_peak']:.0f}% / " if "model_fraction_of_peak" in u else "– / ")
                + f"{100 * u['fraction_of_peak']:.0f}% of {u['peak_gflops']:.0f} GFLOP/s",
                f"{jx['trace_lower_s'] + jx['compile_s']:.1f} s / {warm_s}",
                f"{pipe['images_per_s']:.0f} img/s ({pipe['ratio_to_train_step']:.0f}×)" if pipe else "–",
                f"{r['peak_rss_mib'] / 1024:.1f} GiB",
                f"{r['load_avg_start'][0]:.2f}→{r['load_avg_end'][0]:.2f}",
            ]) + " |"
        )
    return "\n".join(rows)


def variants_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown A/B table of the records' ``--variant`` steps against their default step ("" if none)."""
    rows = ["| config | step | settings changed | median (spread) | speed vs the default |", "|---|---|---|---|---|"]
    for r in records:
        if not r.get("variants"):
            continue
        jx = r["jax"]
        rows.append(f"| {record_label(r)} | default | – | {jx['step']['median_s'] * 1e3:.0f} ms (±{jx['step']['spread_pct']:.0f}%) | 1.00× |")
        for name, v in r["variants"].items():
            settings = ", ".join(f"`{k}={val!r}`" for k, val in v["settings"].items())
            rows.append(f"| {record_label(r)} | {name} | {settings} | {v['step']['median_s'] * 1e3:.0f} ms "
                        f"(±{v['step']['spread_pct']:.0f}%) | {v['speed_vs_default']:.2f}× |")
    return "\n".join(rows) if len(rows) > 2 else ""


def plot_step_times(records: Sequence[dict[str, Any]], path: str) -> None:
    """Bar chart of each record's median step time: vggjax, PyTorch eager and torch.compile (when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels, width = [], 0.27
    for i, r in enumerate(records):
        labels.append(record_label(r, batch_word="b").replace(" 4 KiB", "\n4 KiB"))
        bars = [("vggjax", r["jax"]["step"]["median_s"], "tab:blue"),
                ("PyTorch eager", r.get("torch_eager", {}).get("step", {}).get("median_s"), "tab:orange"),
                ("torch.compile", r.get("torch_compile", {}).get("step", {}).get("median_s"), "tab:green")]
        for j, (name, sec, color) in enumerate(bars):
            if sec:
                ax.bar(i + (j - 1) * width, sec * 1e3, width, color=color, label=name if name not in ax.get_legend_handles_labels()[1] else None)
                ax.text(i + (j - 1) * width, sec * 1e3, f"{sec * 1e3:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(records)), labels, fontsize=8)
    ax.set_ylabel("train step, ms (median)")
    ax.set_title(f"VGG train step on {records[0]['machine']['cpu_model']}, {records[0]['machine']['logical_cores']} cores", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, print a summary, write ``--out``; return the record."""
    args = _parser().parse_args(argv)
    if argv is None and not (args.table or args.no_hugepages):  # the command line, not a caller's process
        hostmem.restart_with_hugepages()  # JAX's and PyTorch's steps alike (vggjax.hostmem)
    if args.plain:
        use_plain_formulations()
    if args.table:
        records = []
        for path in args.table:
            with open(path) as f:
                records.append(json.load(f))
        print(markdown_table(records))
        ab = variants_table(records)
        if ab:
            print("\n" + ab)
        if args.plot:
            plot_step_times(records, args.plot)
            print(f"wrote {args.plot}")
        return {"records": records}
    if args.first_step_only:
        out = _first_step_only(args)
        print(json.dumps(out))
        return out
    record = run(args)
    for line in summary_lines(record):
        print(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
