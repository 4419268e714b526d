"""vggjax.summary: torchsummary-style tables from abstract models, and its CLI."""

import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

import vggjax
from vggjax import summary as summary_mod
from vggjax.freeze import freeze
from vggjax.models import reference as S
from vggjax.summary import main, summarize


def abstract(fn, **kw):
    return nnx.eval_shape(lambda: fn(rngs=nnx.Rngs(0), **kw))


def test_vgg16_fc_conv_400_reproduces_torchsummary():
    model = abstract(S.vgg16_fc_conv_400)
    # Nothing is allocated: every weight is a shape/dtype placeholder.
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(nnx.state(model)))
    text = vggjax.summary(model, (1, 400, 400, 3), flops=False)
    lines = text.splitlines()
    for expected in (
        "Total params: 333,502,275",
        "Trainable params: 318,787,587",
        "Non-trainable params: 14,714,688",
        "Input size (MB): 1.83",
        "Forward/backward pass size (MB): 696.55",
        "Params size (MB): 1272.21",
        "Estimated Total Size (MB): 1970.59",
    ):
        assert expected in lines
    rows = {line.split()[0]: line for line in lines if "(" in line and "[-1" in line}
    assert rows["fc6"].split()[-1] == "301,993,984" and "[-1, 1, 1, 4096]" in rows["fc6"]
    assert rows["fc7"].split()[-1] == "16,781,312"
    assert rows["fc8"].split()[-1] == "12,291"
    assert rows["conv1_1"].split()[-1] == "1,792" and "[-1, 400, 400, 64]" in rows["conv1_1"]
    assert "pool5 (MaxPool)" in rows["pool5"] and "[-1, 12, 12, 512]" in rows["pool5"]
    assert "score_map" not in rows  # an alias of fc8, not a layer op


def test_vgg16_and_vgg16_bn_totals():
    s = summarize(abstract(vggjax.vgg16), (1, 224, 224, 3))
    assert s.total_params == s.trainable_params == 138_357_544 and s.non_trainable_params == 0
    assert s.rows[0].label == "conv1_1 (Conv)" and s.rows[0].shape == (1, 224, 224, 64)
    assert sum(r.params for r in s.rows) == s.total_params
    assert s.flops is not None and 2.9e10 < s.flops < 3.2e10  # ≈ 2 × 15.5 GMACs
    assert "Total params: 138,357,544" in s.table()
    bn_model = abstract(vggjax.vgg16_bn)
    bn = summarize(bn_model, (1, 224, 224, 3), flops=False)
    assert bn.total_params == 138_365_992  # BN scale and bias count; running statistics do not
    assert sum(v.size for v in jax.tree.leaves(nnx.state(bn_model, nnx.BatchStat))) == 8448
    assert bn.flops is None and "FLOPs" not in bn.table()
    assert {r.type for r in bn.rows} >= {
        "Conv",
        "BatchNorm",
        "ReLU",
        "MaxPool",
        "Linear",
        "Dropout",
        "AvgPool",
    }


@pytest.mark.parametrize("name", sorted(S.NETS))
def test_every_seed_net_rows_account_for_all_params(name):
    net = S.NETS[name]
    model = abstract(net.build)
    ch = getattr(model, "in_channels", 3)
    s = summarize(model, (1, net.input_size, net.input_size, ch), flops=False)
    assert s.rows and sum(r.params for r in s.rows) == s.total_params
    assert sum(n for _, n in s.param_tensors) == s.total_params
    assert len({r.name for r in s.rows}) == len(s.rows)


def test_frozen_counts_as_non_trainable_and_gap_head_rows():
    model = abstract(
        vggjax.vgg11, width=1 / 16, head="gap", num_classes=5, head_options={"hidden": [8]}
    )
    freeze(model, "features/conv1_1/*")
    s = summarize(model, (2, 32, 32, 3))
    assert s.non_trainable_params == 3 * 3 * 3 * 4 + 4
    assert s.total_params == s.trainable_params + s.non_trainable_params
    names = [r.name for r in s.rows]
    assert names[-5:] == ["pool5", "head_conv1", "head_relu1", "score", "gap"]  # execution order
    rows = {r.name: r for r in s.rows}
    assert (
        rows["head_conv1"].module == "head/conv1" and rows["head_conv1"].params == 32 * 8 + 8
    )  # 1x1
    assert rows["score"].type == "Conv" and rows["gap"].type == "GlobalAvgPool"
    assert "score_map" not in rows and rows["score"].shape == (2, 1, 1, 5)
    assert s.input_mb == pytest.approx(2 * 32 * 32 * 3 * 4 / 2**20)


def test_summary_is_callable_module_and_exports():
    assert callable(vggjax.summary) and vggjax.summary is summary_mod
    assert vggjax.summarize is summarize
    text = vggjax.summary(abstract(S.Net), (1, 32, 32, 3), flops=False)
    assert "Total params: 18,090" in text and "tanh1 (Tanh)" in text and "flatten (Flatten)" in text


def test_cli_list_and_errors(capsys):
    assert main(["--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed == set(vggjax.ARCHS) | set(S.NETS)
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: unknown model 'nope'; valid: ")
        and "\n" not in err
        and "vgg16_bn" in err
    )
    assert main(["net", "--width", "2"]) == 2
    assert "has no option 'width'" in capsys.readouterr().err
    assert main(["net", "--no-flops"]) == 0
    assert "Total params: 18,090" in capsys.readouterr().out
    assert (
        main(
            [
                "vgg11",
                "--width",
                "0.0625",
                "--num-classes",
                "10",
                "--head",
                "gap",
                "--input-size",
                "32",
                "--no-flops",
            ]
        )
        == 0
    )
    assert "[-1, 10]" in capsys.readouterr().out


def test_cli_subprocess():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    bad = subprocess.run(
        [sys.executable, "-m", "vggjax.summary", "vgg17"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "unknown model 'vgg17'" in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "vggjax.summary", "vgg16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "Total params: 138,357,544" in ok.stdout
        and "FLOPs (forward, XLA cost analysis)" in ok.stdout
    )
    assert "RuntimeWarning" not in ok.stderr
