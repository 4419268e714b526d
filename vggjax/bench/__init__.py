"""``python -m vggjax.bench``: train-step throughput, compile time, utilisation, input pipeline.

    python -m vggjax.bench                                   # vgg16_bn, 32×32, batch 64, CPU
    python -m vggjax.bench --size 32 --batch 64 --torch \
        --out experiments/results/bench/vgg16_bn_32_b64.json
    python -m vggjax.bench --profile                         # + per-layer conv fwd+bwd timings
    python -m vggjax.bench --accelerator --out gpu.json      # GPU/TPU suite (benchmarks/gpu.sh)
    python -m vggjax.bench --exports --out experiments/results/bench/export_ops.json

What it measures, in one process (and one helper subprocess):

* the trainer's own step (:func:`vggjax.training.make_train_step`: forward, loss, backward,
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
* with ``--variant NAME:POLICY`` (repeatable): the JAX step under another compute policy
  (:class:`vggjax.ops.Policy`, e.g. ``old_tapgrad:auto,tapgrad_min_pixels=256``), timed in
  turns with the rest — the A/B behind a default;
* with either of those: ``control``, the default step set up a second time (the same program)
  and timed in the same turns, whose speed against the default is the run's noise floor for
  any ratio (``--no-control`` skips it; docs/performance.md shows why it is there);
* with ``--profile``: each conv layer's forward+backward time for ``lax.conv``, im2col+matmul,
  the per-tap kernel gradient and width-only im2col ("rows") at its shape, and each max
  pool's with ``reduce_window`` and with argmax-and-select (the measurements behind the
  CPU thresholds of :class:`vggjax.ops.Policy`);
* with ``--accelerator`` (:mod:`vggjax.bench.accelerator`): on a GPU or TPU, vgg16_bn at
  224×224 in bfloat16 and float32, MFU against the device's dense peak, peak device memory,
  the policy A/B, and torchvision in PyTorch on the same device;
* with ``--exports`` (:mod:`vggjax.bench.exports`): the op counts and XLA cost-analysis
  FLOPs of the trainer's steps exported for ``cpu``, ``cuda`` and ``tpu`` on this host.

The JSON record (``--out``) also holds the machine: CPU model and flags, cores, library
versions, XLA flags, devices, and the load average at start and end (the numbers are only
comparable when the machine was otherwise idle).
"""

# ruff: noqa: E402 - the imports below come after quiet_tensorflow(), on purpose.
from vggjax.tfenv import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow (the input pipeline)

from vggjax.bench.cli import main, parse_variant, run
from vggjax.bench.profile import conv_layer_shapes, conv_profile, pipeline_bench, pool_profile
from vggjax.bench.report import (
    markdown_table,
    plot_step_times,
    record_label,
    summary_lines,
    variants_table,
)
from vggjax.bench.step import bench_config, build_step, compile_step, cost, fixed_batch, model_flops
from vggjax.bench.timing import (
    WARMUP_ROUNDS,
    host_counter_stats,
    machine_info,
    matmul_peak,
    step_stats,
    time_interleaved,
    with_host_counters,
)

__all__ = [
    "WARMUP_ROUNDS",
    "bench_config",
    "build_step",
    "compile_step",
    "conv_layer_shapes",
    "conv_profile",
    "cost",
    "fixed_batch",
    "host_counter_stats",
    "machine_info",
    "main",
    "markdown_table",
    "matmul_peak",
    "model_flops",
    "parse_variant",
    "pipeline_bench",
    "plot_step_times",
    "pool_profile",
    "record_label",
    "run",
    "step_stats",
    "summary_lines",
    "time_interleaved",
    "variants_table",
    "with_host_counters",
]
