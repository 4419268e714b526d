"""The trainer's own train step, as the benchmark builds, compiles, times and counts it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from vggjax.bench.timing import peak_rss_mib, step_stats

NUM_CLASSES = 10
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def bench_config(
    arch: str,
    size: int,
    batch: int,
    *,
    width: float = 1.0,
    dtype: str = "float32",
    cache_dir: str = "",
    compute: str = "auto",
):
    """The trainer config for the benchmark: ``arch`` with torchvision's fc head, 10 classes,
    SGD as torch.

    SGD lr 0.01, momentum 0.9, coupled weight decay 5e-4 on every parameter (torch
    ``SGD(weight_decay=5e-4)``), constant schedule; dropout 0.5; 3-channel ``size``² input;
    ``compute`` is the compute policy spec (:class:`vggjax.ops.Policy`).
    """
    from vggjax.configs import default

    config = default.get_config()
    config.model = arch
    config.model_options = {
        "width": width,
        "head": "fc",
        "head_options": {},
        "init": "torchvision",
        "dropout": 0.5,
    }
    config.image_size = size
    config.channels = 3
    config.batch_size = batch
    config.dtype = dtype
    config.compute = str(compute)
    config.optim.learning_rate = LEARNING_RATE
    config.optim.momentum = MOMENTUM
    config.optim.nesterov = False
    config.optim.weight_decay = WEIGHT_DECAY
    config.optim.weight_decay_mask = "all"
    config.optim.schedule = "constant"
    config.optim.warmup_epochs = 0.0
    config.compilation_cache = cache_dir
    return config


def fixed_batch(size: int, batch: int, channels: int = 3) -> dict[str, Any]:
    """A fixed random batch in the trainer's format (NHWC float32 images, int32 labels, mask),
    on the device."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    host = {
        "image": rng.standard_normal((batch, size, size, channels), np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
    }
    return jax.device_put({k: jnp.asarray(v) for k, v in host.items()})


def model_flops(config) -> float:
    """The model FLOPs of one train step: XLA's cost analysis of the plain step (``compute="xla"``).

    The step as a straightforward program — ``lax.conv`` convolutions, pool then the full
    fc6 matmul — lowered (not compiled, on abstract shapes) and counted before XLA
    optimizes it. It is the same number whatever formulations the timed step uses, so it is
    what a model-FLOPs utilisation (MFU) divides by; the executed step's own count
    (``flops``) moves with them (im2col multiplies padding taps, the fc6 fold skips 48 of
    49 identical rows). XLA counts convolutions without their padding taps.
    """
    import jax

    config = config.copy_and_resolve_references()
    config.compute = "xla"
    step_fn, make_state = step_fn_of(config)
    state = jax.eval_shape(make_state)
    batch = jax.eval_shape(
        lambda: fixed_batch(config.image_size, config.batch_size, config.channels)
    )
    return cost(jax.jit(step_fn).lower(state, batch))["flops"]


def step_fn_of(config) -> tuple[Callable, Callable]:
    """``(step_fn, make_state)``: the trainer's pure train step for ``config`` and its state's
    initializer."""
    from vggjax import optim
    from vggjax.training import init_state, make_train_step

    tx = optim.make_optimizer(config.optim, steps_per_epoch=1, total_steps=1_000_000)
    graphdef, _, make_state = init_state(config, NUM_CLASSES, config.channels, tx)
    return make_train_step(
        graphdef, tx, "softmax_cross_entropy", compute=config.compute
    ), make_state


def build_step(config) -> tuple[Callable, Any]:
    """``(jitted_step, state)``: the trainer's step for ``config``, jitted with the state donated.

    The traced-step cache (:mod:`vggjax.stepcache`) is keyed by the whole config, the
    compute policy included, so a ``--variant`` gets its own entry.
    """
    import jax

    from vggjax import stepcache

    step_fn, make_state = step_fn_of(config)
    state = jax.jit(make_state)()
    key = json.dumps(
        {"bench": config.to_dict(), "loss": "softmax_cross_entropy", "classes": NUM_CLASSES},
        sort_keys=True,
        default=str,
    )
    step = stepcache.CachedStep(
        step_fn, key=key, cache_dir=config.get("compilation_cache", ""), donate_state=True
    )
    return step, state


def compile_step(config) -> dict[str, Any]:
    """Build, lower and compile the step; time each part and the first execution.

    Returns ``{"trace_lower_s", "compile_s", "first_run_s", "first_step_s", "compiled",
    "state", "batch", "loss"}``; ``first_step_s`` = trace+lower + compile + first run (what
    the first call of a jitted step costs). The persistent cache is enabled first when
    ``config.compilation_cache`` is set (as the trainer does).
    """
    import jax

    from vggjax.training import enable_compilation_cache

    enable_compilation_cache(config.get("compilation_cache", ""))
    step, state = build_step(config)
    batch = fixed_batch(config.image_size, config.batch_size, config.channels)
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


def cost(compiled) -> dict[str, float]:
    """FLOPs and bytes accessed of a lowered or compiled computation (XLA cost analysis)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {
        "flops": float(analysis.get("flops", 0.0)),
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    }


def memory(compiled) -> dict[str, float]:
    """XLA's buffer sizes for the executable, in MiB."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if m is None:
        return {}
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {f.replace("_in_bytes", "_mib"): getattr(m, f, 0) / 2**20 for f in fields}


def op_profile(
    compiled, state: Any, batch: Any, steps: int = 3, top: int = 25
) -> tuple[dict[str, Any], Any]:
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
        files = [
            os.path.join(d, f)
            for d, _, fs in os.walk(trace_dir)
            for f in fs
            if f.endswith(".xplane.pb")
        ]
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
        "top_ops": [
            {"op": k, "ms_per_step": ms(v), **hlo.get(k, {})} for k, v in per_op.most_common(top)
        ],
    }
    return profile, state


def jax_step_setup(
    config,
) -> tuple[Callable[[], None], dict[str, Any], Callable[..., dict[str, Any]]]:
    """Compile (cold cache) the train step of ``config``: ``(one_step, record, finish)``.

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
        out["step"] = step_stats(times, config.batch_size)
        out["step_times_s"] = times
        out.update(cost(compiled))
        out["xla_memory"] = memory(compiled)
        if with_op_profile:
            out["op_profile"], holder["state"] = op_profile(compiled, holder["state"], batch)
        out["peak_rss_mib"] = peak_rss_mib()
        return out

    return one, out, finish


def warm_cache_probe(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    """Run ``python -m vggjax.bench --first-step-only`` in a fresh process against ``cache_dir``.

    The cache was filled by this process's cold compile, so the child measures the
    first step a second training run would see. Returns the child's JSON (or an error).
    """
    cmd = [
        sys.executable,
        "-m",
        "vggjax.bench",
        "--first-step-only",
        "--cache-dir",
        cache_dir,
        "--arch",
        args.arch,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--width",
        str(args.width),
        "--dtype",
        args.dtype,
        "--compute",
        str(args.compute),
    ] + (["--no-hugepages"] if args.no_hugepages else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])
