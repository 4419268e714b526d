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


def imagenet_plan(config):
    """The :class:`~vggjax.training.config.Plan` of ``config`` on ImageNet (1000 classes, RGB,
    1,281,167 training images), without reading the dataset."""
    from vggjax.training.config import Plan

    batch = config.batch_size
    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // batch
    return Plan(
        num_classes=IMAGENET_CLASSES,
        channels=3,
        image_size=config.image_size,
        loss="softmax_cross_entropy",
        batch_size=batch,
        eval_batch_size=batch,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.num_epochs * steps_per_epoch,
        eval_every=steps_per_epoch,
        classes=None,
    )


def abstract_batch(plan, batch: int) -> dict[str, Any]:
    """The trainer's batch of ``batch`` examples as ``ShapeDtypeStruct``\\ s: float32 NHWC images,
    int32 labels (float32 multi-hot ``(batch, classes)`` for a multi-label loss), a bool mask."""
    import jax
    import jax.numpy as jnp

    size = plan.image_size
    multilabel = plan.loss == "multilabel_soft_margin"
    return {
        "image": jax.ShapeDtypeStruct((batch, size, size, plan.channels), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch, plan.num_classes), jnp.float32)
        if multilabel
        else jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }


def trainer_steps(config, *, plan=None, devices=None) -> dict[str, tuple[Callable, tuple]]:
    """``{"train": (jitted step, abstract args), "eval": ...}``: the trainer's steps for
    ``config``, as it jits them.

    The same pure steps and jit options as the trainer's runner (:mod:`vggjax.training.runner`):
    mesh mode is ``jax.jit`` with the state replicated and the batch ``P("data")`` over all
    devices, the state donated; pmap mode is ``jax.pmap`` over the local devices with the
    batch split per device and BatchNorm averaging its statistics over the device axis.
    ``plan`` (sizes, classes, batch sizes; default :func:`imagenet_plan`) and ``devices`` (the
    mesh's or pmap's devices, e.g. a compile-only TPU topology's; default all devices, and for
    pmap the local ones) generalise it to any run and target (:mod:`vggjax.aot`); with explicit
    ``devices`` a pmap step is returned as the ``jax.pmap`` itself (a ``jax.jit`` around it
    would lower for the default backend).
    """
    import jax
    import numpy as np

    from vggjax import optim, parallel
    from vggjax.training import init_state, runner

    plan = plan or imagenet_plan(config)
    tx = optim.make_optimizer(
        config.optim, steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps
    )
    graphdef, eval_graphdef, make_state = init_state(config, plan.num_classes, plan.channels, tx)
    state = jax.eval_shape(make_state)
    train_batch = abstract_batch(plan, plan.batch_size)
    eval_batch = abstract_batch(plan, plan.eval_batch_size)
    step, ev = runner.pure_steps(config, graphdef, eval_graphdef, tx, plan.loss, state)
    if config.parallel == "pmap":
        n = jax.local_device_count() if devices is None else len(devices)

        def per_device(tree, split: bool):
            return jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(
                    (n, x.shape[0] // n, *x.shape[1:]) if split else (n, *x.shape), x.dtype
                ),
                tree,
            )

        train = jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=0, devices=devices)
        evaluate = jax.pmap(ev, axis_name=parallel.AXIS, devices=devices)
        if devices is None:
            train, evaluate = jax.jit(train), jax.jit(evaluate)
        replicated = per_device(state, False)
        return {
            "train": (train, (replicated, per_device(train_batch, True))),
            "eval": (evaluate, (replicated, per_device(eval_batch, True))),
        }
    if devices is None:
        mesh = parallel.make_mesh()
    else:  # Auto axes, as parallel.make_mesh makes them
        auto = (jax.sharding.AxisType.Auto,)
        mesh = jax.sharding.Mesh(np.asarray(devices), (parallel.AXIS,), axis_types=auto)
    train_opts, eval_opts = runner.mesh_jit_options(state, mesh)
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return {
        "train": (
            jax.jit(step, **train_opts),
            (_abstract(state, rep), _abstract(train_batch, data)),
        ),
        "eval": (jax.jit(ev, **eval_opts), (_abstract(state, rep), _abstract(eval_batch, data))),
    }


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
