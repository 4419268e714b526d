"""Ahead-of-time compilation of the trainer's steps for Cloud TPU and NVIDIA GPU targets, on a CPU
host: ``python -m vggjax.aot --target=v5e-8 [--config=FILE] [--config.KEY=VALUE] [--out=F.json]``.

The trainer's real train and eval steps (config → model → step → shardings, as ``python -m
vggjax.train`` builds them; mesh-jit or pmap, ``config.parallel``) are compiled with the
target's own compiler — libtpu for ``v4-N``/``v5e-N``/``v5p-N``/``v6e-N`` slices of any size (a
multi-host slice over every chip), the CUDA plugin for ``h100x8``, ``2xh100x8``, ``h200``,
``a100-80``, ``a100-40`` and ``b200`` — on compile-only devices, without an accelerator and
without reading the dataset (sizes come from TFDS metadata or ``--config.num_classes`` /
``channels`` / ``image_size``). Install the compilers with ``pip install -e ".[tpu-aot]"`` and
``".[gpu-aot]"``. ``--max-batch`` searches the largest global batch whose train step fits.

The JSON record (``--out``; :func:`vggjax.aot.run.compile_target` returns it). Bytes are per
device, times in seconds, FLOPs per step:

* ``command``; ``wall_s``; ``fits`` (every compiled step fits); ``error`` (only when the train
  step does not fit: the one line the CLI prints); ``notes`` (list of caveats);
* ``target``: ``name``, ``platform`` (``tpu``/``cuda``), ``device_kind``, ``devices``, ``hosts``,
  ``devices_per_host``, ``topology`` (libtpu topology arguments, or the GPU ``topology`` and
  ``spec_file``), ``memory_bytes`` (a device's memory), ``available_bytes`` (what a program may
  use: XLA:TPU's figure, or JAX's GPU allocator fraction), ``memory_note``, ``hbm_bytes_per_s``;
* ``config``: ``model``, ``dataset``, ``sizes_from``, ``num_classes``, ``channels``,
  ``image_size``, ``train_examples``, ``batch_size``, ``eval_batch_size``, ``dtype``,
  ``parallel``, ``compute``;
* ``versions``: ``jax``, ``jaxlib`` and ``libtpu`` or ``jax-cuda12-plugin``;
* ``steps``: ``{"train": STEP, "eval": STEP}``, each with ``batch`` (global),
  ``per_device_batch``, ``devices``, ``lower_s``, ``compile_s``; ``memory``: ``argument_bytes``,
  ``output_bytes``, ``alias_bytes``, ``temp_bytes``, ``code_bytes``, ``total_bytes`` (arguments +
  outputs - aliased + temp + code), ``available_bytes``, ``headroom_bytes``, ``fits`` (and
  ``error`` when XLA refused the compile for memory: then only the total it reported);
  ``expected_argument_bytes``: ``state`` (replicated), ``batch_shard``, ``total`` (before the
  target's layout padding), ``unused`` (state the step never reads), ``params`` (trainable);
  ``collectives``: ``{kind: {"count", "bytes", "bytes_by_dtype", "largest"}}`` from the
  optimized HLO; ``convolutions``: ``lowering`` and ``ops`` (TPU ``convolution`` count, or
  cuDNN custom-call targets and Triton GEMM fusions); ``cpu_formulations``: im2col
  concatenate counts in the StableHLO and the optimized HLO, StableHLO ``convolution``/
  ``reduce_window``/``select_and_scatter`` counts, ``native`` (no CPU formulation reached the
  target);
  ``flops_per_device``, ``flops_source``, ``model_flops_per_device`` (before optimisation),
  ``flops_per_image``, ``bytes_accessed_per_device``; ``roofline`` (an estimate: ``compute_s``,
  ``memory_s``, ``step_s``, ``bound``, ``images_per_s``, ``peak_tflops``, ``hbm_bytes_per_s``);
* ``max_batch`` (with ``--max-batch``, or when the train step does not fit): ``global_batch``,
  ``per_device_batch``, ``exact``, ``smallest_failing_batch``, ``compiles`` (each ``batch``,
  ``per_device_batch``, ``fits``, ``total_bytes``, ``temp_bytes``, ``flops_per_image``,
  ``compile_s``), ``linear_model`` (``fixed_bytes``, ``bytes_per_example``),
  ``rematerialisation`` (``observable``, ``detected``, ``note``, and on TPU ``flops_per_image``
  by per-device batch and ``ratio``).
"""

from vggjax.aot.errors import AotError, CompilerMissing, DoesNotFit

__all__ = ["AotError", "CompilerMissing", "DoesNotFit"]
