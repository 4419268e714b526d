"""``python -m vggjax.bench`` in a tiny configuration: it runs and records every field, all
positive."""

import json
import subprocess
import sys

import pytest
from subproc import ROOT, cpu_env


@pytest.mark.slow
def test_bench_tiny_run_writes_positive_fields(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "vggjax.bench",
        "--arch",
        "vgg11_bn",
        "--width",
        "0.0625",
        "--size",
        "32",
        "--batch",
        "4",
        "--steps",
        "2",
        "--peak-size",
        "512",
        "--pipeline-seconds",
        "0.3",
        "--op-profile",
        "--out",
        str(out),
        "--variant",
        "no_fold:auto,fold_pooled_linear=False,squares_by_dot=False",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "img/s" in proc.stdout
    r = json.loads(out.read_text())
    jx = r["jax"]
    for key in (
        "trace_lower_s",
        "compile_s",
        "first_run_s",
        "first_step_s",
        "flops",
        "bytes_accessed",
        "peak_rss_mib",
    ):
        assert jx[key] > 0, key
    for key in ("median_s", "min_s", "max_s", "images_per_s"):
        assert jx["step"][key] > 0, key
    assert jx["step"]["steps"] == 2 and len(jx["step_times_s"]) == 2
    warm = jx["warm_cache"]
    assert "error" not in warm, warm.get("error")
    for key in ("trace_lower_s", "compile_s", "first_run_s", "first_step_s"):
        assert warm[key] > 0, key
    assert r["matmul_peak"]["gflops"] > 0
    assert r["utilisation"]["step_gflops"] > 0 and r["utilisation"]["fraction_of_peak"] > 0
    assert (
        r["input_pipeline"]["images_per_s"] > 0 and r["input_pipeline"]["ratio_to_train_step"] > 0
    )
    assert r["peak_rss_mib"] > 0
    m = r["machine"]
    assert m["cpu_model"] and m["logical_cores"] > 0 and m["versions"]["jax"]
    assert len(r["load_avg_start"]) == 3 and len(r["load_avg_end"]) == 3
    assert "torch_eager" not in r  # --torch not given
    ops = jx["op_profile"]
    assert ops["total_op_ms_per_step"] > 0 and ops["by_kind_ms_per_step"]
    assert ops["top_ops"] and all(op["ms_per_step"] > 0 and op["shape"] for op in ops["top_ops"])
    assert len(r["git"]["commit"]) == 40  # the code that was measured
    from vggjax import hostmem

    if hostmem.hugepages_env({}) is not None:  # glibc Linux with THP on madvise, as here and in CI
        assert hostmem.TUNABLE in m["glibc_tunables"]
    assert jx["host"]["page_faults_per_step"] >= 0 and jx["host"]["system_cpu_s_per_step"] >= 0
    # Model FLOPs (the plain step's count) and the model-FLOPs utilisation.
    assert jx["model_flops"] > 0 and r["utilisation"]["model_fraction_of_peak"] > 0
    # The --variant step: traced with the settings changed, timed in turns with the default.
    v = r["variants"]["no_fold"]
    assert v["compute"] == "auto,fold_pooled_linear=False,squares_by_dot=False"
    assert r["config"]["compute"] == "auto"
    assert v["step"]["steps"] == 2 and v["step"]["median_s"] > 0 and v["speed_vs_default"] > 0
    assert v["flops"] > 0 and v["flops"] != jx["flops"]  # pool then fc6 is another program
    assert v["host"]["page_faults_per_step"] >= 0
    assert "variant no_fold" in proc.stdout
    # The A/A control: the default step again, the same program, in the same turns.
    c = r["variants"]["control"]
    assert list(r["variants"]) == ["control", "no_fold"]
    assert c["compute"] == "auto" and c["flops"] == jx["flops"]
    assert c["step"]["steps"] == 2 and c["speed_vs_default"] > 0
    assert "variant control (A/A control, the default step again)" in proc.stdout


def test_conv_layer_shapes_follow_the_config():
    from vggjax import bench

    shapes = bench.conv_layer_shapes("vgg16_bn", 32, 64)
    assert len(shapes) == 13
    assert shapes[0] == {"name": "conv1_1", "shape": [64, 32, 32, 3, 64]}
    assert shapes[-1] == {"name": "conv5_3", "shape": [64, 2, 2, 512, 512]}


def test_time_interleaved_takes_turns_and_rotates():
    from vggjax import bench

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = bench.time_interleaved(fns, 3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    # One untimed round, then rounds starting with a, b, c in turn.
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"


def test_host_counters_log_each_call():
    import numpy as np

    from vggjax import bench

    def touch() -> None:  # 32 MiB of fresh pages: faults the kernel must serve
        np.ones(8 << 20, np.float32)

    wrapped, samples = bench.with_host_counters(touch)
    for _ in range(3):
        wrapped()
    assert len(samples) == 3
    assert all(faults > 0 and system >= 0 for faults, system in samples)
    stats = bench.host_counter_stats(samples)
    assert stats["page_faults_per_step"] == sorted(f for f, _ in samples)[1]
    assert bench.host_counter_stats([]) == {
        "page_faults_per_step": 0.0,
        "system_cpu_s_per_step": 0.0,
    }


def test_record_label_marks_plain_and_4k_page_runs():
    from vggjax import bench, hostmem

    r = {"config": {"arch": "vgg16_bn", "size": 32, "batch": 64, "formulations": "default"}}
    assert bench.record_label(r) == "vgg16_bn 32×32 batch 64"  # an older record: no tunables field
    r["machine"] = {"glibc_tunables": hostmem.TUNABLE}
    assert bench.record_label(r, batch_word="b") == "vgg16_bn 32×32 b64"
    r["machine"] = {"glibc_tunables": ""}
    r["config"]["formulations"] = "plain"
    assert bench.record_label(r) == "vgg16_bn 32×32 batch 64 plain 4 KiB pages"


def test_parse_variant_reads_a_policy_and_rejects_bad_ones():
    from vggjax import bench, ops

    assert bench.parse_variant("old:auto,tapgrad_min_pixels=256, argmax_max_pool=False") == (
        "old",
        ops.Policy(tapgrad_min_pixels=256, argmax_max_pool=False),
    )
    assert bench.parse_variant("plain:xla") == ("plain", ops.Policy("xla"))
    bad = {
        "auto,tapgrad_min_pixels=256": "expected NAME:POLICY",  # no name
        "x:auto,tapgrad_min_pixels": "is not field=value",
        "x:auto,nope=1": "unknown field",
        "x:gpu": "unknown compute mode 'gpu'",
        "x:auto,tapgrad_min_pixels=True": "must be an integer",
        "x:auto,argmax_max_pool=maybe": "not a number or True/False",
    }
    for spec, words in bad.items():
        with pytest.raises(SystemExit, match=words):
            bench.parse_variant(spec)
    args = bench.cli._parser().parse_args(["--variant", "control:xla"])
    with pytest.raises(SystemExit, match="'control' is the run's own A/A control"):
        bench.run(args)


def test_model_flops_are_the_plain_steps_whatever_the_policy():
    import jax

    from vggjax import bench

    config = bench.bench_config("vgg11_bn", 32, 2, width=0.0625)
    flops = bench.model_flops(config)
    assert flops == bench.model_flops(
        bench.bench_config("vgg11_bn", 32, 2, width=0.0625, compute="cpu")
    )
    assert config.compute == "auto"  # not changed by asking
    # ... and it is the plain step's own count (the bench's step, lowered with real arrays).
    plain, state = bench.build_step(
        bench.bench_config("vgg11_bn", 32, 2, width=0.0625, compute="xla")
    )
    assert bench.cost(jax.jit(plain.fn).lower(state, bench.fixed_batch(32, 2)))["flops"] == flops
    auto, state = bench.build_step(config)
    assert (
        bench.cost(jax.jit(auto.fn).lower(state, bench.fixed_batch(32, 2)))["flops"] != flops
    )  # im2col, fold


@pytest.mark.slow
def test_accelerator_suite_runs_its_code_path_on_cpu(tmp_path):
    """``--accelerator`` (benchmarks/gpu.sh) refuses a CPU, and with the test-only --allow-cpu runs
    every JAX contender and records the skipped PyTorch ones (full width only) with the reason."""
    refused = subprocess.run(
        [sys.executable, "-m", "vggjax.bench", "--accelerator"],
        cwd=ROOT,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "needs a GPU or TPU" in refused.stderr
    out = tmp_path / "acc.json"
    cmd = [
        sys.executable,
        "-m",
        "vggjax.bench",
        "--accelerator",
        "--allow-cpu",
        "--arch",
        "vgg11_bn",
        "--width",
        "0.0625",
        "--size",
        "32",
        "--batch",
        "4",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["contenders"]) == {"jax_bf16", "jax_f32", "jax_bf16_cpu_policy"}
    assert set(r["skipped"]) == {"torch_eager_bf16", "torch_compile_bf16"}
    for name, e in r["contenders"].items():
        assert e["step"]["median_s"] > 0 and e["compile_s"] > 0 and e["model_flops"] > 0, name
    assert r["contenders"]["jax_bf16_cpu_policy"]["compute"] == "cpu"
    assert r["ratios"]["jax_bf16_vs_jax_f32"] > 0 and r["device_kind"] == "cpu"


def test_peak_table_knows_the_devices_users_have():
    from vggjax.bench.accelerator import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
    assert peak_tflops("Tesla V100-SXM2-16GB", "bfloat16") == 125.0
    assert peak_tflops("TPU v4", "bfloat16") == 275.0
    assert (
        peak_tflops("TPU v5 lite", "bfloat16") == 197.0
        and peak_tflops("TPU v5p", "bfloat16") == 459.0
    )
    assert peak_tflops("TPU v6 lite", "bfloat16") == 918.0
    assert peak_tflops("cpu", "bfloat16") is None


def test_torch_gpu_step_options_run_on_cpu():
    """The GPU comparison's PyTorch step (bf16 autocast, channels_last), here on the CPU at
    32x32."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from vggjax.bench.torch_step import torch_step_setup

    one, info = torch_step_setup("vgg11", 32, 2, compile=False, bf16=True, channels_last=True)
    one()
    assert (
        info["bf16_autocast"]
        and info["channels_last"]
        and info["first_step_s"] > 0
        and info["device"] == "cpu"
    )
    assert torch.get_num_threads() >= 1
