"""What GPU and TPU users run, proven on this CPU host: the trainer's real steps exported with
``jax.export`` for ``cuda`` and ``tpu`` hold plain XLA convolutions and pooling, and the CPU export
keeps the CPU formulations (compute="auto" everywhere).

The steps are those of the ImageNet config (fc head, 224x224, bfloat16 compute, its optimizer, the
global batch of 256 sharded over the 8 fake devices), for vgg16 and vgg16_bn, traced on abstract
arrays: no memory, no compute. VGG-16 has 13 convs and 5 max pools; the first conv needs no input
gradient, so a train step has 13 + 13 + 12 = 38 convolutions; fc6-fc8 are 3 matmuls forward and 6
backward.
"""

from __future__ import annotations

import functools
import re

import jax
import pytest

from vggjax.bench import exports

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs the 8 fake devices of conftest"
)

CONVS, POOLS, FC_MATMULS = 13, 5, 3


@functools.cache
def _steps(arch: str, parallel: str):
    return exports.trainer_steps(exports.imagenet_config(arch, parallel=parallel))


@functools.cache
def _export(arch: str, parallel: str, which: str, platform: str):
    fn, args = _steps(arch, parallel)[which]
    return exports.export(fn, args, platform)


def _big_concatenates(mlir: str) -> list[str]:
    """``concatenate`` ops whose result has rank ≥ 3: im2col patches (a stack of scalar sums or
    an RNG key is rank 1)."""
    return [
        line
        for line in mlir.splitlines()
        if "stablehlo.concatenate" in line and re.search(r"-> tensor<(\d+x){3,}", line)
    ]


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
@pytest.mark.parametrize("arch", ["vgg16_bn", "vgg16"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_gpu_and_tpu_train_step_is_native_convolution_and_pooling(platform, arch, parallel):
    exp = _export(arch, parallel, "train", platform)
    assert exp.platforms == (platform,)
    mlir = exp.mlir_module()
    ops = exports.op_counts(mlir)
    assert ops["convolution"] == CONVS + CONVS + (
        CONVS - 1
    )  # forward, kernel gradient, input gradient
    assert (
        ops["dot_general"] == 3 * FC_MATMULS
    )  # fc6-fc8 only: no per-tap kernel-gradient matmul, no im2col matmul
    assert (
        ops["reduce_window"] == POOLS and ops["select_and_scatter"] == POOLS
    )  # XLA's max pool and its gradient
    assert _big_concatenates(mlir) == []
    if parallel == "jit":
        assert exp.nr_devices == 8 and "sharding" in mlir  # the global batch over the mesh


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_gpu_and_tpu_eval_step_is_native_convolution_and_pooling(platform, parallel):
    mlir = _export("vgg16_bn", parallel, "eval", platform).mlir_module()
    ops = exports.op_counts(mlir)
    assert (ops["convolution"], ops["dot_general"], ops["reduce_window"]) == (
        CONVS,
        FC_MATMULS,
        POOLS,
    )
    assert ops["concatenate"] == 0 and ops["select_and_scatter"] == 0


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_cpu_export_keeps_the_cpu_formulations(parallel):
    mlir = _export("vgg16_bn", parallel, "train", "cpu").mlir_module()
    ops = exports.op_counts(mlir)
    # At 224x224, batch 32 per device: im2col on conv1_1 (3 input channels) and the 14x14
    # layers (1568 rows <= 2048), rows on conv1_2, per-tap kernel gradients on 128+ channels.
    assert ops["convolution"] < 2 * CONVS + CONVS - 1
    assert (
        ops["dot_general"] > 3 * FC_MATMULS + 9
    )  # at least one conv's 9 per-tap kernel-gradient matmuls
    assert _big_concatenates(mlir)  # im2col patches
    assert ops["reduce_window"] == 0 and ops["select_and_scatter"] == 0  # argmax max pooling
    eval_ops = exports.op_counts(_export("vgg16_bn", parallel, "eval", "cpu").mlir_module())
    assert eval_ops["reduce_window"] == 0 and eval_ops["convolution"] < CONVS


def test_forced_policies_export_what_they_say():
    """compute="xla" gives the GPU program on CPU too; compute="cpu" the CPU formulations on a
    GPU."""
    plain = exports.trainer_steps(exports.imagenet_config("vgg16", compute="xla"))
    forced = exports.trainer_steps(exports.imagenet_config("vgg16", compute="cpu"))
    cpu_plain = exports.op_counts(exports.export(*plain["train"], "cpu").mlir_module())
    cuda_auto = exports.op_counts(_export("vgg16", "jit", "train", "cuda").mlir_module())
    same = ("convolution", "dot_general", "concatenate", "reduce_window", "select_and_scatter")
    assert {k: cpu_plain[k] for k in same} == {k: cuda_auto[k] for k in same}
    assert cpu_plain["case"] == 0  # nothing staged twice when the policy is not "auto"
    cuda_forced = exports.op_counts(exports.export(*forced["train"], "cuda").mlir_module())
    assert cuda_forced["reduce_window"] == 0 and cuda_forced["convolution"] < 38


def test_record_is_regenerable_and_matches(tmp_path):
    """experiments/results/bench/export_ops.json holds the op counts this code exports today."""
    import json
    import os

    path = os.path.join(
        os.path.dirname(__file__), "..", "experiments", "results", "bench", "export_ops.json"
    )
    with open(path) as f:
        record = json.load(f)
    assert record["devices"] == 8
    for platform in exports.PLATFORMS:
        got = exports.op_counts(_export("vgg16_bn", "jit", "train", platform).mlir_module())
        assert record["steps"]["vgg16_bn train jit"][platform]["ops"] == got, platform
