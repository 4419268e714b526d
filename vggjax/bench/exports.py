"""What GPU and TPU users run, shown on a CPU host: the trainer's steps exported for each platform.

The trainer's real train and eval steps — the ImageNet config (``vggjax/configs/imagenet_vgg16.py``:
fc head, 224×224, bfloat16 compute, its SGD/plateau optimizer, batch 256) for ``vgg16`` and
``vgg16_bn`` — are traced on abstract arrays (no memory, no compute), the global batch sharded
over every device of a ``("data",)`` mesh (or, for ``parallel="pmap"``, split per device), and
exported with ``jax.export`` for ``cpu``, ``cuda`` and ``tpu``. Counting the StableHLO ops of each
export shows which formulations each platform gets under ``compute="auto"``: on ``cuda`` and
``tpu`` every conv layer is a ``convolution`` in the forward pass and in both gradients and max
pooling is ``reduce_window``; on ``cpu`` the tuned formulations (im2col concatenations,
per-tap kernel-gradient matmuls, argmax pooling) appear instead. ``tests/test_export.py``
asserts this; ``python -m vggjax.bench --exports --out experiments/results/bench/export_ops.json``
writes the record (op counts and XLA cost-analysis FLOPs per platform).
"""

from __future__ import annotations

import collections
import re
import time
from typing import Any, Callable

PLATFORMS = ("cpu", "cuda", "tpu")
OPS = (
    "convolution",
    "dot_general",
    "concatenate",
    "slice",
    "pad",
    "reduce_window",
    "select_and_scatter",
    "case",
    "custom_call",
)
IMAGENET_CLASSES = 1000
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def imagenet_config(arch: str = "vgg16_bn", *, compute: str = "auto", parallel: str = "jit"):
    """The ImageNet training config with ``arch`` as the model (everything else as the config
    file says)."""
    from vggjax.configs import imagenet_vgg16

    config = imagenet_vgg16.get_config()
    config.model = arch
    config.compute = compute
    config.parallel = parallel
    return config


def _abstract(tree: Any, sharding: Any = None) -> Any:
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def trainer_steps(config) -> dict[str, tuple[Callable, tuple]]:
    """``{"train": (jitted step, abstract args), "eval": ...}``: the trainer's steps for
    ``config``, as it jits them.

    The same pure steps and jit options as the trainer's runner (:mod:`vggjax.training.runner`):
    mesh mode is ``jax.jit`` with the state replicated and the batch ``P("data")`` over all
    devices, the state donated; pmap mode is ``jax.pmap`` over the local devices with the
    batch split per device and BatchNorm averaging its statistics over the device axis.
    """
    import jax
    import jax.numpy as jnp

    from vggjax import optim, parallel
    from vggjax.training import init_state, runner

    batch = config.batch_size
    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // batch
    tx = optim.make_optimizer(
        config.optim,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.num_epochs * steps_per_epoch,
    )
    graphdef, eval_graphdef, make_state = init_state(config, IMAGENET_CLASSES, 3, tx)
    state = jax.eval_shape(make_state)
    size = config.image_size
    images = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }
    step, ev = runner.pure_steps(
        config, graphdef, eval_graphdef, tx, "softmax_cross_entropy", state
    )
    if config.parallel == "pmap":
        n = jax.local_device_count()

        def per_device(tree, split: bool):
            return jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(
                    (n, x.shape[0] // n, *x.shape[1:]) if split else (n, *x.shape), x.dtype
                ),
                tree,
            )

        args = (per_device(state, False), per_device(images, True))
        return {
            "train": (jax.jit(jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=0)), args),
            "eval": (jax.jit(jax.pmap(ev, axis_name=parallel.AXIS)), args),
        }
    mesh = parallel.make_mesh()
    train_opts, eval_opts = runner.mesh_jit_options(state, mesh)
    args = (
        _abstract(state, parallel.replicated(mesh)),
        _abstract(images, parallel.batch_sharding(mesh)),
    )
    return {"train": (jax.jit(step, **train_opts), args), "eval": (jax.jit(ev, **eval_opts), args)}


def op_counts(mlir: str) -> dict[str, int]:
    """How many times each op of :data:`OPS` appears in a StableHLO module's text."""
    found = collections.Counter(re.findall(r"\bstablehlo\.([a-z_]+)\b", mlir))
    return {op: found.get(op, 0) for op in OPS}


def export(fn: Callable, args: tuple, platform: str) -> Any:
    """``jax.export.export(fn, platforms=(platform,))(*args)``."""
    from jax import export as jax_export

    return jax_export.export(fn, platforms=(platform,))(*args)


def flops(fn: Callable, args: tuple, platform: str) -> float:
    """XLA's cost-analysis FLOPs of ``fn`` lowered for ``platform`` (before XLA's
    optimisations; global batch)."""
    from vggjax.bench.step import cost

    return cost(fn.trace(*args).lower(lowering_platforms=(platform,)))["flops"]


def main_record() -> dict[str, Any]:
    """Op counts and FLOPs of vgg16 and vgg16_bn's train and eval steps, mesh and pmap, per
    platform."""
    import jax

    from vggjax.bench.timing import git_state, machine_info

    record: dict[str, Any] = {
        "command": "python -m vggjax.bench --exports",
        "what": "the trainer's steps for the ImageNet config "
        "(fc head, 224x224, bfloat16, batch 256 global) "
        "exported with jax.export per platform under compute='auto'; StableHLO op counts and XLA "
        "cost-analysis FLOPs of the lowered (unoptimised) module",
        "devices": jax.device_count(),
        "machine": machine_info(),
        "git": git_state(),
        "steps": {},
    }
    for arch in ("vgg16", "vgg16_bn"):
        for parallel in ("jit", "pmap"):
            steps = trainer_steps(imagenet_config(arch, parallel=parallel))
            for which, (fn, args) in steps.items():
                entry = {}
                for platform in PLATFORMS:
                    t0 = time.perf_counter()
                    counts = op_counts(export(fn, args, platform).mlir_module())
                    entry[platform] = {
                        "ops": counts,
                        "flops": flops(fn, args, platform),
                        "export_s": round(time.perf_counter() - t0, 2),
                    }
                record["steps"][f"{arch} {which} {parallel}"] = entry
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    lines = [f"exports over {record['devices']} devices ({record['what']})"]
    for name, entry in record["steps"].items():
        for platform, e in entry.items():
            ops = ", ".join(f"{k} {v}" for k, v in e["ops"].items() if v)
            lines.append(f"{name:24s} {platform:4s} {e['flops'] / 1e12:8.2f} TFLOP  {ops}")
    return lines
