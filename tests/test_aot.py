"""``python -m vggjax.aot``: the trainer's real steps compiled for Cloud TPU and NVIDIA GPU targets
on this CPU host, with the targets' own compilers (libtpu; the CUDA plugin with ptxas).

A small config keeps it fast: the default config (VGG-11-BN, 8 conv layers, on the embedded
digits: 32x32x1, 10 classes) at width 1/8 in bfloat16. A train step then holds 8 + 8 + 7 = 23
convolutions (forward, kernel gradients, input gradients but the first layer's). Each target is
compiled once per module; only the command line itself runs in a subprocess. Where a compiler is
not installed the tests that need it skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from subproc import ROOT, cpu_env

from vggjax.aot import AotError, CompilerMissing, DoesNotFit, run, search, targets
from vggjax.aot import compile as aot_compile

CONVS = 8  # VGG-11's conv layers
TRAIN_CONVS = 3 * CONVS - 1
TINY = ["--config.model_options.width=0.125", "--config.dtype=bfloat16"]


def _require(platform: str) -> None:
    module = "libtpu" if platform == "tpu" else "jax_plugins.xla_cuda12"
    if targets.installed(module):
        return
    pip = targets.TPU_PIP if platform == "tpu" else targets.GPU_PIP
    message = f"the {platform} compiler is not installed: {pip}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)  # CI installs both extras: a missing compiler is a broken setup
    pytest.skip(message)


def _config(**overrides):
    from vggjax.configs import default

    config = default.get_config()
    config.model_options.width = 0.125
    config.dtype = "bfloat16"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _compile(target, which=("train",), **overrides) -> dict:
    return run.compile_target(_config(**overrides), target, which=which)


@pytest.fixture(scope="module")
def v5e8(tmp_path_factory):
    """The CLI on a single-host TPU slice: table on stdout, the JSON record in --out."""
    _require("tpu")
    out = tmp_path_factory.mktemp("aot") / "v5e8.json"
    cmd = [sys.executable, "-m", "vggjax.aot", "--target=v5e-8", *TINY, f"--out={out}"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=cpu_env(None), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def v5e16_pmap():
    """A 4-host TPU slice, pmap mode, compiled over all 16 chips."""
    _require("tpu")
    return _compile("v5e-16", parallel="pmap", batch_size=128)


@pytest.fixture(scope="module")
def h100x8():
    _require("cuda")
    return _compile("h100x8", which=("train", "eval"))


@pytest.fixture(scope="module")
def h100_2x8_pmap():
    """Two 8-GPU hosts, pmap mode."""
    _require("cuda")
    return _compile("2xh100x8", parallel="pmap", batch_size=128)


def _check_step(step: dict, devices: int, per_device: int) -> None:
    """What every compiled train step must show: the target's own convolutions, no CPU
    formulation, a gradient all-reduce, FLOPs and a roofline estimate."""
    assert (step["devices"], step["per_device_batch"]) == (devices, per_device)
    cpu = step["cpu_formulations"]
    assert cpu["native"], cpu
    assert cpu["im2col_concatenates_stablehlo"] == cpu["im2col_concatenates_hlo"] == 0
    assert (cpu["stablehlo_convolution"], cpu["stablehlo_reduce_window"]) == (TRAIN_CONVS, 5)
    all_reduce = step["collectives"]["all-reduce"]
    # The gradients carry every parameter: in bfloat16 (half the float32 parameters' bytes), as
    # XLA sums the bf16 gradients across devices before casting them back; plus BatchNorm's
    # batch statistics.
    assert all_reduce["count"] >= 1
    assert all_reduce["bytes"] >= step["expected_argument_bytes"]["params"] // 2 > 0
    assert step["memory"]["fits"] and step["memory"]["temp_bytes"] > 0
    assert step["flops_per_device"] > 0 and step["flops_per_image"] > 0
    roof = step["roofline"]
    assert roof["estimate"] and roof["step_s"] > 0 and roof["images_per_s"] > 0


def test_tpu_single_host_cli_prints_the_table_and_writes_the_record(v5e8):
    proc, record = v5e8
    assert record["target"]["devices"] == 8 and record["target"]["hosts"] == 1
    assert record["target"]["device_kind"] == "TPU v5 lite" and record["fits"]
    train, ev = record["steps"]["train"], record["steps"]["eval"]
    _check_step(train, 8, 8)
    assert ev["cpu_formulations"]["native"] and ev["memory"]["fits"]
    # XLA:TPU keeps the convolutions as its own ops (fused, so at least one per conv)
    assert train["convolutions"]["ops"]["convolution"] >= TRAIN_CONVS
    assert ev["convolutions"]["ops"]["convolution"] >= CONVS
    # arguments: the replicated state plus the batch shard, padded to TPU tiles (never less)
    expected = train["expected_argument_bytes"]
    assert expected["total"] == expected["state"] + expected["batch_shard"]
    assert expected["batch_shard"] == 8 * (32 * 32 * 4 + 4) + 8  # images, labels, mask bytes
    assert expected["total"] <= train["memory"]["argument_bytes"] < 3 * expected["total"]
    assert train["flops_source"].startswith("XLA:TPU")
    assert "arguments" in proc.stdout and "fits" in proc.stdout and "ESTIMATE" in proc.stdout
    assert "could not determine TPU" not in proc.stderr  # libtpu's no-TPU-here warnings


def test_tpu_multi_host_slice_compiles_over_every_chip(v5e16_pmap):
    assert v5e16_pmap["target"]["devices"] == 16 and v5e16_pmap["target"]["hosts"] == 4
    train = v5e16_pmap["steps"]["train"]
    _check_step(train, 16, 8)
    assert train["convolutions"]["ops"]["convolution"] >= TRAIN_CONVS


def _cudnn(step: dict) -> int:
    return sum(v for k, v in step["convolutions"]["ops"].items() if k.startswith("__cudnn$conv"))


def test_gpu_single_host_lowers_every_conv_to_cudnn(h100x8):
    assert h100x8["target"]["device_kind"] == "NVIDIA H100 80GB HBM3"
    train, ev = h100x8["steps"]["train"], h100x8["steps"]["eval"]
    _check_step(train, 8, 8)
    assert _cudnn(train) == TRAIN_CONVS and _cudnn(ev) == CONVS
    assert ev["cpu_formulations"]["native"] and ev["memory"]["fits"]
    assert train["convolutions"]["ops"]["convolution (not cuDNN)"] == 0
    # XLA:GPU lays arguments out unpadded: exactly the state plus the batch shard
    for step in (train, ev):
        assert step["memory"]["argument_bytes"] == step["expected_argument_bytes"]["total"]
    assert train["memory"]["alias_bytes"] > 0  # the donated state is updated in place
    assert train["flops_source"].startswith("XLA cost analysis of the step lowered for cuda")


def test_gpu_multi_host_pmap(h100_2x8_pmap):
    assert h100_2x8_pmap["target"]["devices"] == 16 and h100_2x8_pmap["target"]["hosts"] == 2
    train = h100_2x8_pmap["steps"]["train"]
    _check_step(train, 16, 8)
    assert _cudnn(train) == TRAIN_CONVS
    assert train["memory"]["argument_bytes"] == train["expected_argument_bytes"]["total"]


def test_unknown_target_is_one_line_listing_the_valid_names():
    cmd = [sys.executable, "-m", "vggjax.aot", "--target=v5e-7"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=cpu_env(None), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown target 'v5e-7'; valid:")
    assert all(name in lines[0] for name in ("v5e-8", "v4-32", "v5p-128", "v6e-256", "h100x8"))


def test_batch_that_does_not_divide_over_the_devices():
    with pytest.raises(
        AotError, match=r"batch_size=60 does not divide over the 8 devices of v5e-8"
    ):
        _compile("v5e-8", batch_size=60)
    with pytest.raises(AotError, match=r"over the 16 devices of 2xh100x8; use a multiple of 16"):
        _compile("2xh100x8", batch_size=24)


@pytest.mark.parametrize("name,extra", [("v5e-8", "tpu-aot"), ("h100x8", "gpu-aot")])
def test_missing_compiler_names_the_pip_command(monkeypatch, name, extra):
    monkeypatch.setattr(targets, "installed", lambda module: False)
    with pytest.raises(CompilerMissing, match=rf'pip install -e "\.\[{extra}\]"') as e:
        targets.compile_devices(targets.resolve(name))
    assert "\n" not in str(e.value)


def test_a_step_that_does_not_fit_says_what_it_needs_and_what_fits():
    _require("tpu")
    target = dataclasses.replace(targets.resolve("v5e-8"), available_bytes=2**20)
    record = run.compile_target(_config(), target, which=("train",), max_compiles=1)
    assert not record["fits"] and record["max_batch"]["global_batch"] == 0
    with pytest.raises(DoesNotFit) as e:
        run.check_fits(record)
    message = str(e.value)
    assert "\n" not in message and "batch_size=64 does not fit on v5e-8" in message
    assert "1 MiB available" in message and "not even one example per device fits" in message
    assert e.value.needed == record["steps"]["train"]["memory"]["total_bytes"] > 2**20


@pytest.mark.parametrize("tpu_like", [False, True], ids=["gpu_like", "tpu_like"])
def test_max_batch_search_finds_the_boundary_and_sees_recomputation(monkeypatch, tpu_like):
    """The search on a synthetic memory model (no compiles): 100 MiB + 3 MiB per example of a
    200 MiB device, FLOPs per image 10% higher above 20 examples per device (recomputation,
    which only XLA:TPU's post-optimisation count can show).
    ``tpu_like`` is what XLA:TPU does with the real VGG-16: a batch that does not fit fails to
    compile, saying only what it needed, and one that fits near the limit reports nearly all the
    memory (here from 100 examples, 1/3 of the line's answer, the first compile's batch); the
    search's line must not be fooled into guessing far beyond, as it was before."""
    mib = 2**20
    name = "v5e-8" if tpu_like else "h100x8"
    target = dataclasses.replace(targets.resolve(name), available_bytes=200 * mib)
    calls = []

    def entry(b_local: int) -> dict:
        total = 100 * mib + 3 * mib * b_local
        fits = total <= 200 * mib
        reported = 195 * mib if tpu_like and fits and b_local >= 30 else total
        return {
            "batch": 8 * b_local,
            "per_device_batch": b_local,
            "devices": 8,
            "memory": {"fits": fits, "total_bytes": reported, "temp_bytes": 0, "code_bytes": 0},
            "flops_per_image": 1e9 * (1.1 if b_local > 20 else 1.0),
            "compile_s": 0.0,
            "expected_argument_bytes": {"state": 40 * mib},
        }

    def compile_step(fn, args, target, *, batch, dtype, parallel):
        calls.append(batch)
        found = entry(batch // 8)
        if tpu_like and not found["memory"]["fits"]:
            raise aot_compile.OutOfMemory("RESOURCE_EXHAUSTED", found["memory"]["total_bytes"], 0)
        return found

    monkeypatch.setattr(search, "compile_step", compile_step)
    found = search.max_batch(
        lambda b: (None, b), target, entry(8), dtype="bfloat16", parallel="jit"
    )
    assert found["per_device_batch"] == 33 and found["global_batch"] == 264 and found["exact"]
    assert len(calls) <= (4 if tpu_like else 3), calls  # the line lands next to the boundary
    remat = found["rematerialisation"]
    if tpu_like:
        assert remat["detected"] and remat["ratio"] > 1.05
    else:  # XLA:GPU's FLOPs are counted before optimisation: recomputation cannot show
        assert remat["observable"] is False and remat["detected"] is None


def test_max_batch_search_grows_when_memory_stops_growing_with_the_batch():
    """What XLA:TPU did with vgg16_bn on v4-8 (30.8 GiB available): 64 per chip needed 6.5 GiB,
    419 23.1 GiB, 581 only 22.1 GiB (it rematerialised). The line through the last two points
    slopes down, so it says nothing; the search spent its last compile on 582 (one example more
    per chip, 22.1 GiB again). Unbounded and without a measured line, it now grows by GROW at
    least; with a measured line that puts the boundary at what fits, one more settles it."""
    gib = 2**30
    first = {
        "per_device_batch": 64,
        "memory": {"total_bytes": int(6.49 * gib), "code_bytes": 55 * 2**20},
        "expected_argument_bytes": {"state": int(0.53 * gib)},
    }

    def point(b, total, fits=True):
        return {"per_device_batch": b, "fits": fits, "total_bytes": int(total * gib)}

    points = {64: point(64, 6.49), 419: point(419, 23.1), 581: point(581, 22.1)}
    available = 30.8 * gib
    nxt = search._next(points, first, available, search.SATURATED * available, [])
    assert nxt >= search.GROW * 581, nxt
    # a measured line (memory linear in the batch) that says 581 is the largest: 582 settles it
    slope = (available - 6.49 * gib) / (581.5 - 64)
    linear = {b: point(b, (6.49 * gib + slope * (b - 64)) / gib) for b in (64, 300, 581)}
    assert search._next(linear, first, available, 2 * available, []) == 582


def test_xla_tpu_out_of_memory_message_is_parsed():
    text = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (149.06G) exceeds available HBM (15.75G).\nmore"
    )
    oom = aot_compile.out_of_memory(RuntimeError(text))
    assert oom.needed == int(149.06 * 2**30) and oom.available == int(15.75 * 2**30)
    assert aot_compile.out_of_memory(RuntimeError("INTERNAL: something else")) is None


@pytest.mark.parametrize(
    "name,devices,hosts,topology",
    [
        ("v5e-8", 8, 1, dict(topology_name="v5e:2x4", chips_per_host_bounds=(2, 4, 1))),
        ("v5e-256", 256, 64, dict(topology_name="v5e:16x16", wrap=(True, True, False))),
        ("v6e-128", 128, 32, dict(topology_name="v6e:8x16", wrap=(False, True, False))),
        ("v4-32", 16, 4, dict(topology_name="v4:2x2x4", chip_config_name="megacore")),
        ("v5p-128", 64, 16, dict(topology_name="v5:4x4x4", wrap=(True, True, True))),
        ("v5p-640", 320, 80, dict(topology_name="v5:4x4x20")),
        ("2xh100x8", 16, 2, dict(topology="1x2x8")),
        ("a100-40x4", 4, 1, dict(topology="1x1x4")),
    ],
)
def test_target_names_map_to_topologies(name, devices, hosts, topology):
    target = targets.resolve(name)
    assert (target.devices, target.hosts) == (devices, hosts)
    assert {k: target.topology[k] for k in topology} == topology


@pytest.mark.parametrize("kind", sorted(targets.GPUS))
def test_gpu_specs_describe_their_gpu(kind):
    target = targets.resolve(f"{kind}x8")
    assert 40e9 < target.memory_bytes < 200e9 and target.hbm_bytes_per_s > 1e12
    assert target.available_bytes == pytest.approx(0.75 * target.memory_bytes)
    assert target.peak_tflops("bfloat16") > 300
    _require("cuda")
    devices = targets.compile_devices(target)  # this jaxlib's proto parses the spec
    assert len(devices) == 8 and devices[0].device_kind == target.device_kind
