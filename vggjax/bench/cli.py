"""The ``python -m vggjax.bench`` command line: parse, measure, print, write one JSON record."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from vggjax import hostmem
from vggjax.bench import profile, report, step, timing
from vggjax.bench.step import NUM_CLASSES

VARIANT_FORMAT = "NAME:POLICY, e.g. old_tapgrad:auto,tapgrad_min_pixels=256 or plain:xla"
CONTROL = report.CONTROL


def parse_variant(spec: str) -> tuple[str, Any]:
    """``"NAME:POLICY"`` (``--variant``) -> ``(NAME, vggjax.ops.Policy)``; a one-line
    SystemExit if malformed."""
    from vggjax import ops
    from vggjax.errors import ConfigError

    name, sep, body = spec.partition(":")
    if not sep or not name.isidentifier() or not body:
        raise SystemExit(f"error: --variant {spec!r}: expected {VARIANT_FORMAT}")
    try:
        return name, ops.Policy.parse(body)
    except ConfigError as e:
        raise SystemExit(f"error: --variant {spec!r}: {e}") from None


def _parser() -> argparse.ArgumentParser:
    from vggjax import bench

    p = argparse.ArgumentParser(
        prog="python -m vggjax.bench", description=bench.__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--arch", default="vgg16_bn", help="a vggjax/torchvision VGG name (default vgg16_bn)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="input height = width (default 32; 224 with --accelerator)",
    )
    p.add_argument(
        "--batch", type=int, default=None, help="batch size (default 64; 256 with --accelerator)"
    )
    p.add_argument("--steps", type=int, default=10, help="steady-state steps timed (default 10)")
    p.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier of the JAX model (tiny runs)"
    )
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="JAX compute dtype"
    )
    p.add_argument(
        "--compute",
        default="auto",
        metavar="POLICY",
        help="compute policy of the timed step (vggjax.ops.Policy spec; default auto)",
    )
    p.add_argument(
        "--plain", action="store_true", help="the same as --compute xla: plain XLA ops everywhere"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar=VARIANT_FORMAT.split(",")[0],
        help="also time the JAX step under another compute policy "
        "(an A/B, in turns with the others), "
        f"{VARIANT_FORMAT.split(', ', 1)[1]}; repeatable",
    )
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager and torch.compile")
    p.add_argument("--no-torch-compile", action="store_true", help="with --torch: eager only")
    p.add_argument("--no-control", action="store_true", help="skip the A/A control (default twice)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="per-layer conv and max-pool fwd+bwd in every formulation",
    )
    p.add_argument(
        "--op-profile",
        action="store_true",
        help="time of every XLA:CPU op in the step (jax.profiler)",
    )
    p.add_argument(
        "--no-warm-probe",
        action="store_true",
        help="skip the warm-cache first step in a subprocess",
    )
    p.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline measurement")
    p.add_argument(
        "--pipeline-seconds", type=float, default=3.0, help="how long to pull batches (default 3 s)"
    )
    p.add_argument(
        "--peak-size",
        type=int,
        default=timing.PEAK_MATMUL_SIZE,
        help="matmul size for the peak (default 4096)",
    )
    p.add_argument(
        "--no-hugepages",
        action="store_true",
        help="do not restart with glibc.malloc.hugetlb=1 (see vggjax.hostmem; for the A/B)",
    )
    p.add_argument(
        "--cache-dir",
        default="",
        help="persistent compilation cache (default: a fresh temp dir, i.e. cold)",
    )
    p.add_argument(
        "--accelerator",
        action="store_true",
        help="the GPU/TPU suite: bf16 and f32, the policy A/B, MFU against the device's peak, "
        "PyTorch on the same device (benchmarks/gpu.sh)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="with --accelerator: set up no further contender after this many seconds "
        "(default 300)",
    )
    # --accelerator's code path on CPU (tests)
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--exports",
        action="store_true",
        help="op counts and FLOPs of the trainer's steps exported for cpu, cuda and tpu "
        "(no compute)",
    )
    p.add_argument("--first-step-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help="write the JSON record here")
    p.add_argument(
        "--table",
        nargs="+",
        metavar="JSON",
        help="print the markdown results table of these records and exit",
    )
    p.add_argument(
        "--plot",
        default="",
        metavar="PNG",
        help="with --table: also draw the step times of the records",
    )
    return p


def _contenders(args: argparse.Namespace, config, variants, record: dict[str, Any]):
    """Compile every step to be timed; ``(steps by name, finish callbacks by variant name)``.

    A run that compares anything (``--variant``, ``--torch``) also times the :data:`CONTROL`
    copy of the default step, unless ``--no-control``.
    """
    one_jax, record["jax"], finish_jax = step.jax_step_setup(config)
    contenders: dict[str, Callable[[], None]] = {"jax": one_jax}
    finishers: dict[str, Callable[..., dict[str, Any]]] = {"": finish_jax}
    if (variants or args.torch) and not args.no_control:
        variants = [(CONTROL, config.compute), *variants]
    for name, policy in variants:
        vconfig = config.copy_and_resolve_references()
        vconfig.compute = str(policy)
        contenders[f"jax:{name}"], vx, finishers[name] = step.jax_step_setup(vconfig)
        record.setdefault("variants", {})[name] = {"compute": str(policy), **vx}
    if args.torch:
        from vggjax.bench.torch_step import torch_step_setup

        for name, compiled in (("torch_eager", False), ("torch_compile", True)):
            if compiled and args.no_torch_compile:
                continue
            contenders[name], record[name] = torch_step_setup(
                args.arch, args.size, args.batch, compile=compiled
            )
    return contenders, finishers


def _time_all(args: argparse.Namespace, contenders, finishers, record: dict[str, Any]) -> None:
    """Time the contenders in turns and write their statistics into ``record``."""
    counted, host_samples = {}, {}
    for name, fn in contenders.items():
        counted[name], host_samples[name] = timing.with_host_counters(fn)
    times = timing.time_interleaved(counted, args.steps)
    record["timing"] = (
        "interleaved: "
        + ", ".join(contenders)
        + f" in turns, after {timing.WARMUP_ROUNDS} untimed rounds"
    )
    jx = record["jax"]
    finishers[""](times["jax"], args.op_profile)
    for name, finish in finishers.items():
        if name:
            v = record["variants"][name]
            v.update(finish(times[f"jax:{name}"]))
            v["speed_vs_default"] = jx["step"]["median_s"] / v["step"]["median_s"]
    for name in contenders:
        entry = record["variants"][name[4:]] if name.startswith("jax:") else record[name]
        if name.startswith("torch"):
            entry.update(step=timing.step_stats(times[name], args.batch), step_times_s=times[name])
        entry["host"] = timing.host_counter_stats(
            host_samples[name][-args.steps :]
        )  # not the warm-up rounds


def _utilisation(args: argparse.Namespace, config, record: dict[str, Any]) -> None:
    jx = record["jax"]
    peak = timing.matmul_peak(args.peak_size)
    record["matmul_peak"] = peak
    achieved = jx["flops"] / jx["step"]["median_s"] / 1e9
    jx["model_flops"] = step.model_flops(config)
    model_rate = jx["model_flops"] / jx["step"]["median_s"] / 1e9
    record["utilisation"] = {
        "step_gflops": achieved,
        "peak_gflops": peak["gflops"],
        "fraction_of_peak": achieved / peak["gflops"],
        "model_step_gflops": model_rate,
        "model_fraction_of_peak": model_rate / peak["gflops"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement ``args`` asks for and return the JSON-able record."""
    if args.torch and args.width != 1.0:
        raise SystemExit(
            "error: --torch compares against torchvision's full-width model; use --width 1"
        )
    variants = [
        parse_variant(spec) for spec in args.variant
    ]  # bad specs fail before anything is compiled
    if len({name for name, _ in variants}) < len(variants):
        raise SystemExit("error: --variant names must differ")
    if any(name == CONTROL for name, _ in variants):
        raise SystemExit(
            f"error: --variant name {CONTROL!r} is the run's own A/A control; choose another name"
        )
    load_start, t_start = os.getloadavg(), time.time()
    info = timing.machine_info()
    info["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    own_cache = not args.cache_dir
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="vggjax-bench-cache-")
    try:
        config = _bench_config(args, cache_dir)
        record: dict[str, Any] = {
            "command": "python -m vggjax.bench " + " ".join(sys.argv[1:]),
            "config": {
                **timing.run_config(args),
                "dtype": args.dtype,
                "compute": str(args.compute),
                "head": "fc",
                "num_classes": NUM_CLASSES,
                "optimizer": f"SGD lr {step.LEARNING_RATE} momentum "
                f"{step.MOMENTUM} weight_decay {step.WEIGHT_DECAY} (coupled)",
            },
            "machine": info,
            "git": timing.git_state(),
            "load_avg_start": list(load_start),
        }
        contenders, finishers = _contenders(args, config, variants, record)
        _time_all(args, contenders, finishers, record)
        if not args.no_warm_probe:
            record["jax"]["warm_cache"] = step.warm_cache_probe(args, cache_dir)
        _utilisation(args, config, record)
        if not args.no_pipeline:
            pipe = profile.pipeline_bench(args.size, args.batch, args.pipeline_seconds)
            pipe["ratio_to_train_step"] = (
                pipe["images_per_s"] / record["jax"]["step"]["images_per_s"]
            )
            record["input_pipeline"] = pipe
        if args.profile:
            record["conv_profile"] = profile.conv_profile(
                args.arch, args.size, args.batch, args.width, compute=args.compute
            )
            record["pool_profile"] = profile.pool_profile(
                args.arch, args.size, args.batch, args.width
            )
        if args.torch:
            record["ratios"] = {
                f"jax_vs_{name}": record["jax"]["step"]["images_per_s"]
                / record[name]["step"]["images_per_s"]
                for name in contenders
                if name.startswith("torch")
            }
        record["peak_rss_mib"] = timing.peak_rss_mib()
        record["load_avg_end"] = list(os.getloadavg())
        record["wall_s"] = time.time() - t_start
        return record
    finally:
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)


def _bench_config(args: argparse.Namespace, cache_dir: str):
    """The step's config from the command line's model, input and compute options."""
    return step.bench_config(
        args.arch,
        args.size,
        args.batch,
        width=args.width,
        dtype=args.dtype,
        cache_dir=cache_dir,
        compute=args.compute,
    )


def _first_step_only(args: argparse.Namespace) -> dict[str, Any]:
    """The warm-cache probe: build and run one step against ``--cache-dir``; times only."""
    c = step.compile_step(_bench_config(args, args.cache_dir))
    return {k: c[k] for k in ("trace_lower_s", "compile_s", "first_run_s", "first_step_s")}


def _tables(args: argparse.Namespace) -> dict[str, Any]:
    records = []
    for path in args.table:
        with open(path) as f:
            records.append(json.load(f))
    print(report.markdown_table(records))
    ab = report.variants_table(records)
    if ab:
        print("\n" + ab)
    if args.plot:
        report.plot_step_times(records, args.plot)
        print(f"wrote {args.plot}")
    return {"records": records}


def _write(record: dict[str, Any], path: str) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, print a summary, write ``--out``; return the record."""
    args = _parser().parse_args(argv)
    if args.plain:
        args.compute = "xla"
    if argv is None and not (
        args.table or args.no_hugepages or args.exports
    ):  # the command line, not a caller
        hostmem.restart_with_hugepages()  # JAX's and PyTorch's steps alike (vggjax.hostmem)
    if args.table:
        return _tables(args)
    if args.exports:
        if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            # The test mesh's 8 fake devices (read when JAX first creates its CPU client).
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
            ).strip()
        from vggjax.bench import exports

        record = exports.main_record()
        for line in exports.summary_lines(record):
            print(line)
        _write(record, args.out)
        return record
    if args.accelerator:
        from vggjax.bench import accelerator

        args.argv = list(sys.argv[1:] if argv is None else argv)
        record = accelerator.run(args)
        for line in accelerator.summary_lines(record):
            print(line)
        _write(record, args.out)
        return record
    args.size = 32 if args.size is None else args.size
    args.batch = 64 if args.batch is None else args.batch
    if args.first_step_only:
        out = _first_step_only(args)
        print(json.dumps(out))
        return out
    record = run(args)
    for line in report.summary_lines(record):
        print(line)
    _write(record, args.out)
    return record
