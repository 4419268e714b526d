"""The trainability check recognises each reference failure and passes each fix clean; the watch
says when a run sits at the constant-prediction loss; the trainer and `python -m vggjax.diagnose`
report it.

``CASES`` is the single source of the table in docs/trainability.md:
``python tests/test_trainability.py --write-docs`` rewrites it, and
``test_docs_table_matches_the_cases`` fails when the two drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import subprocess
import sys
from typing import Callable

import numpy as np
import pytest
from flax import nnx
from repo import GeneratedTable
from subproc import ROOT, cpu_env
from train_helpers import override

# The seed's head std 0.005 at full width, scaled so that std·√fan_in is the same at width 1/8.
OVERFEAT_HEAD = {
    "fc6": "trunc_normal(0.0141)",
    "fc7*": "trunc_normal(0.0141)",
    "fc9": "trunc_normal(0.0141)",
    "*": "xavier_uniform",
}


@dataclasses.dataclass(frozen=True)
class Case:
    experiment: str  # the anchor in experiments/README.md
    configuration: str
    build: Callable[[], nnx.Module]
    image: tuple[int, int, int, int]  # NHWC of the N(0, 1) batch
    num_classes: int
    expected: tuple[str, ...]  # finding kinds; () = passes clean
    loss: str = "softmax_cross_entropy"
    per_pixel: bool = False


def _vgg(init: str, bn: bool = False):
    import vggjax

    builder = vggjax.vgg16_bn if bn else vggjax.vgg16
    return lambda: builder(
        num_classes=10, width=0.125, init=init, bias_init="zeros", rngs=nnx.Rngs(0)
    )


def _vgg11_bn():
    import vggjax

    # the default config's network (VGG-11-BN, width 1/4, He init) on 32x32 digits
    return lambda: vggjax.vgg11_bn(
        num_classes=10,
        width=0.25,
        init="he_normal",
        head_options=dict(pool_size=1, hidden=256),
        in_channels=1,
        rngs=nnx.Rngs(0),
    )


def _ref(name: str, **kw):
    from vggjax.models import reference

    return lambda: reference.NETS[name](rngs=nnx.Rngs(0), **kw)


CASES = {
    "vgg16_normal001": Case(
        "depth_init",
        "VGG-16, N(0, 0.01²) (the paper's wording read as std 0.01)",
        _vgg("normal(0.01)"),
        (8, 32, 32, 3),
        10,
        ("vanishing_signal",),
    ),
    "vgg16_normal01": Case(
        "depth_init",
        "VGG-16, N(0, 0.1²) (variance 10⁻² read literally)",
        _vgg("normal(0.1)"),
        (8, 32, 32, 3),
        10,
        ("exploding_signal",),
    ),
    "vgg16_he": Case(
        "depth_init", "VGG-16, He init (fix)", _vgg("he_normal"), (8, 32, 32, 3), 10, ()
    ),
    "vgg16_bn_normal001": Case(
        "depth_init",
        "VGG-16-BN, N(0, 0.01²) (fix)",
        _vgg("normal(0.01)", bn=True),
        (8, 32, 32, 3),
        10,
        (),
    ),
    "two_conv_zeros": Case(
        "init_study",
        "[conv, BN, ReLU] × 2, zero init",
        _ref("two_conv_bn", init="zeros"),
        (1, 224, 224, 3),
        3,
        ("zero_init",),
        per_pixel=True,
    ),
    "two_conv_zeros_conv2": Case(
        "init_study",
        "zero init, only conv2 (learns)",
        _ref("two_conv_bn", init="zeros", only_conv2=True),
        (1, 224, 224, 3),
        3,
        (),
        per_pixel=True,
    ),
    "two_conv_constant5": Case(
        "init_study",
        "constant 5 (trains)",
        _ref("two_conv_bn", init="constant(5)"),
        (1, 224, 224, 3),
        3,
        (),
        per_pixel=True,
    ),
    "two_conv_kaiming": Case(
        "init_study",
        "Kaiming normal (fix)",
        _ref("two_conv_bn"),
        (1, 224, 224, 3),
        3,
        (),
        per_pixel=True,
    ),
    "wsdr": Case(
        "gap_dead_relu",
        "WSDR: ReLU on the GAP class scores, no BN",
        _ref("wsdr", width=0.125),
        (8, 64, 64, 3),
        20,
        ("vanishing_signal", "relu_scores"),
        loss="multilabel_soft_margin",
    ),
    "wsdr_bn_linear": Case(
        "gap_dead_relu",
        "WSDR with BN and linear scores (fix)",
        _ref("wsdr_bn", width=0.125, score_relu=False),
        (8, 64, 64, 3),
        20,
        (),
        loss="multilabel_soft_margin",
    ),
    "overfeat_two": Case(
        "overfeat_1x1",
        "OverFeat, two 1×1 head layers (fc7 + fc7_1), width 1/8",
        _ref("overfeat_slim", extra_1x1=1, width=0.125, init=OVERFEAT_HEAD),
        (8, 60, 60, 3),
        3,
        ("input_independent",),
    ),
    "overfeat_two_he": Case(
        "overfeat_1x1",
        "two 1×1, He init (fix)",
        _ref("overfeat_slim", extra_1x1=1, width=0.125, init="he_normal"),
        (8, 60, 60, 3),
        3,
        (),
    ),
    "overfeat_two_bn": Case(
        "overfeat_1x1",
        "two 1×1, BatchNorm (fix)",
        _ref("overfeat_slim", extra_1x1=1, width=0.125, init=OVERFEAT_HEAD, batch_norm=True),
        (8, 60, 60, 3),
        3,
        (),
    ),
    "vgg11_bn_batch1": Case(
        "batch_lr",
        "the default config at batch 1: BN over 1 x 2 x 2 values per channel in block 5",
        _vgg11_bn(),
        (1, 32, 32, 1),
        10,
        ("bn_few_values",),
    ),
    "vgg11_bn_batch2": Case(
        "batch_lr",
        "batch 2: 8 values per channel (fix)",
        _vgg11_bn(),
        (2, 32, 32, 1),
        10,
        (),
    ),
}


def _batch(case: Case) -> dict:
    rng = np.random.default_rng(0)
    n = case.image[0]
    if case.per_pixel:
        label = np.full(case.image[:3], 2, np.int32)  # init_study: every pixel is class 2
    elif case.loss == "multilabel_soft_margin":
        label = (rng.random((n, case.num_classes)) < 0.15).astype(np.float32)
    else:
        label = rng.integers(0, case.num_classes, n).astype(np.int32)
    return {
        "image": rng.standard_normal(case.image, np.float32),
        "label": label,
        "mask": np.ones(n, bool),
    }


@functools.cache
def report_of(name: str):
    from vggjax import trainability

    case = CASES[name]
    return trainability.check(case.build(), _batch(case), case.loss, case.num_classes)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_reference_failure_is_recognised_and_each_fix_passes_clean(name):
    report = report_of(name)
    assert tuple(f.kind for f in report.findings) == CASES[name].expected, report.table()
    for f in report.findings:
        assert "\n" not in f.line() and f.see.startswith("experiments/README.md#")


def test_the_numbers_behind_the_findings():
    """Spot checks of the measurements themselves, not only the verdicts."""
    vanishing = report_of("vgg16_normal001")
    conv = [r for r in vanishing.layers if r.param is not None]
    assert conv[-1].signal < 1e-12 * conv[0].signal  # the signal is gone by the logits
    # and the first layer gets no gradient
    assert conv[0].grad_norm < 1e-9 * max(r.grad_norm for r in conv)
    assert (
        math.isclose(vanishing.constant_loss, math.log(10))
        and abs(vanishing.loss - math.log(10)) < 1e-3
    )
    zero = report_of("two_conv_zeros")
    assert zero.grad_norm == 0.0 and all(r.zero_weights for r in zero.layers if r.param)
    he = report_of("overfeat_two_he")
    assert 1.2 < np.median([r.gain for r in he.layers if r.gain]) < 1.6  # He: √2
    assert report_of("wsdr").logits_min >= 0.0 > report_of("wsdr_bn_linear").logits_min


def test_constant_loss_is_ln_c_or_the_label_prior():
    from vggjax import trainability

    assert trainability.constant_loss("softmax_cross_entropy", 10) == pytest.approx(math.log(10))
    labels = np.array([[1, 0], [1, 0], [0, 0], [1, 1]], np.float32)  # class priors 3/4, 1/4
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert trainability.constant_loss("multilabel_soft_margin", 2, labels) == pytest.approx(h)


def test_watch_says_a_plateau_a_collapse_and_a_blow_up_once_each():
    from vggjax import trainability

    said = []
    watch = trainability.Watch(
        math.log(10), window=20, report=lambda items, step: said.extend(items)
    )
    rng = np.random.default_rng(0)
    for step in range(1, 60):  # a noisy loss around ln 10, as with a 3-image batch
        watch.observe(step, math.log(10) + 0.1 * rng.standard_normal(), 1.0)
    # once the window is full
    assert [f.kind for f in said] == ["plateau"] and 20 <= said[0].step < 40
    watch.observe(60, 2.3, 0.0)
    watch.observe(61, 2.3, 0.0)
    assert [f.kind for f in said] == ["plateau", "collapse"] and said[1].step == 60
    quiet = trainability.Watch(
        math.log(10), window=20, report=lambda items, step: said.extend(items)
    )
    for step in range(1, 60):  # a loss that falls is no plateau
        quiet.observe(step, math.log(10) * math.exp(-step / 10), 1.0)
    blow = trainability.Watch(math.log(3), report=lambda items, step: said.extend(items))
    blow.observe(1, 1.1, 1.0)
    blow.observe(2, 80.0, 1e4)
    assert [f.kind for f in said] == ["plateau", "collapse", "blow_up"]


def test_watch_judges_a_plateau_only_after_the_warm_up():
    from vggjax import trainability

    said = []
    watch = trainability.Watch(
        math.log(10), window=20, report=lambda items, step: said.extend(items), plateau_from=100
    )
    for step in range(1, 100):  # at ln 10 while the warm-up raises the learning rate
        watch.observe(step, math.log(10), 1.0)
    assert said == []
    watch.observe(101, math.log(10), 1.0)
    assert [(f.kind, f.step) for f in said] == [("plateau", 101)]


def test_plateau_recheck_says_its_findings_or_what_it_ruled_out(capsys):
    """The hook checks the network at the step after a plateau, once; with nothing found, one
    plateau_unexplained line names what was ruled out."""
    from vggjax.training import Loop, Record, hooks

    checked = []
    hook = hooks.Trainability(
        math.log(10), recheck=lambda state: checked.append(state) or [], workdir="runs/x"
    )
    loop = Loop(total_steps=200, start_step=0)
    for step in range(1, 80):
        hook.on_records(loop, [Record(step, {"loss": math.log(10), "grad_norm": 1.0})], False)
        hook.after_step(loop, step, f"state{step}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and checked == ["state50"]  # the window: 50 steps
    assert lines[0].startswith("warning: trainability: step 50: loss stuck at 2.3026")
    assert "python -m vggjax.diagnose --workdir=runs/x prints the per-layer table" in lines[0]
    assert lines[1].startswith("warning: trainability: step 50: the network at this step has no")
    assert "try optim.learning_rate 10x lower and 10x higher" in lines[1]


def _default(**overrides):
    from vggjax.configs import default

    config = default.get_config()
    config.compilation_cache = ""
    config.progress = False
    config.num_devices = 1  # the conftest's 8 fake devices would not split a batch of 3
    return override(config, **overrides)


@pytest.mark.slow
def test_default_fashion_mnist_and_imagenet_configs_have_no_findings():
    from vggjax import diagnose
    from vggjax.configs import fashion_mnist, imagenet_vgg16

    assert diagnose.diagnose(_default(), 16).findings == []
    fashion = fashion_mnist.get_config()
    fashion.download = False  # prepared or not (then N(0, 1) images): no finding either way
    assert diagnose.diagnose(fashion).findings == []
    # not prepared here: N(0, 1) 224x224 images, 1000 classes
    imagenet = imagenet_vgg16.get_config()
    report = diagnose.diagnose(imagenet, 4)
    assert report.findings == [] and len([r for r in report.layers if r.param]) == 16


@pytest.mark.slow
def test_trainer_reports_findings_at_step_0_and_a_plateau_while_training(tmp_path):
    """The issue's case: the default config at batch size 3 sits at ln 10; a zero init is named
    at step 0."""
    from vggjax import training

    workdir = tmp_path / "b3"
    config = _default(batch_size=3, num_train_steps=600)  # the warm-up (479 steps) as the default
    training.train_and_evaluate(config, str(workdir))
    found = [json.loads(line) for line in open(workdir / "metrics.jsonl") if '"finding"' in line]
    # judged after the warm-up; then the network at that step is checked: fc6's ReLUs all died
    assert [f["finding"] for f in found] == ["plateau", "dead_layer"], found
    assert found[0]["step"] > 479 and found[1]["step"] >= found[0]["step"]
    assert "constant-prediction loss 2.3026" in found[0]["message"]
    assert f"diagnose --workdir={workdir}" in found[0]["message"]
    assert found[1]["layer"] == "relu6"
    assert "optim.learning_rate (peak 0.05 at batch 3)" in found[1]["message"]
    # diagnose --workdir says the same of the checkpoint, against the network at step 0
    from vggjax import diagnose

    report = diagnose.diagnose(diagnose.run_config(str(workdir)), 0, str(workdir))
    assert report.trained and [f.kind for f in report.findings] == ["dead_layer"]
    relu6 = next(r for r in report.layers if r.name == "relu6")
    assert relu6.dead == 1.0 and report.logits_signal < 1e-6
    zero = tmp_path / "zero"
    config = _default(
        num_train_steps=2,
        **{
            "model_options.init": "zeros",
            "model_options.width": 0.0625,
            "optim.warmup_epochs": 0.0,
        },
    )
    training.train_and_evaluate(config, str(zero))
    found = [json.loads(line) for line in open(zero / "metrics.jsonl") if '"finding"' in line]
    assert found and found[0]["finding"] == "zero_init" and found[0]["step"] == 0
    off = tmp_path / "off"
    config = _default(
        num_train_steps=2,
        check_trainability=False,
        **{
            "model_options.init": "zeros",
            "model_options.width": 0.0625,
            "optim.warmup_epochs": 0.0,
        },
    )
    training.train_and_evaluate(config, str(off))
    assert not any('"finding"' in line for line in open(off / "metrics.jsonl"))


@pytest.mark.slow
def test_diagnose_cli_prints_the_table_and_the_finding():
    cmd = [
        sys.executable,
        "-m",
        "vggjax.diagnose",
        "--config.model=vgg16",
        "--config.model_options.width=0.125",
        "--config.model_options.init=normal(0.01)",
        "--config.model_options.head_options.hidden=32",
        "--batch_size=8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # stderr: the one line saying which batch was checked, none of JAX's, TF's or TFDS's chatter
    assert proc.stderr.strip().splitlines() == ["vgg16: one training batch of vggjax_digits"]
    table = [line for line in proc.stdout.splitlines() if not line.startswith("building ")]
    assert table[0].split() == [
        "layer",
        "act",
        "std",
        "signal",
        "gain",
        "grad",
        "norm",
        "dead",
        "%",
    ]
    assert "conv1_1" in proc.stdout and "finding: the logits' signal" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "vggjax.diagnose", "--config.nope=1"],
        cwd=ROOT,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: unknown config key"
    )


def test_diagnose_workdir_errors_are_one_line(tmp_path):
    from vggjax import diagnose
    from vggjax.errors import DataError

    with pytest.raises(DataError, match=r"no config.json there; point it at the --workdir"):
        diagnose.run_config(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=r"is not a trainer config"):
        diagnose.run_config(str(tmp_path))
    (tmp_path / "config.json").write_text(_default().to_json())
    config = diagnose.run_config(str(tmp_path))
    with pytest.raises(DataError, match=r"has no checkpoint yet; run the trainer until its first"):
        diagnose.diagnose(config, 2, str(tmp_path))


def render_table() -> str:
    rows = ["| experiment | configuration | what the check reports |", "|---|---|---|"]
    for name, case in CASES.items():
        found = report_of(name).findings
        text = "<br>".join(f"**{f.kind}**: {f.figure}" for f in found) if found else "no findings"
        rows.append(
            f"| [{case.experiment}](../experiments/README.md#{case.experiment}) | "
            f"{case.configuration} | {text} |"
        )
    return "\n".join(rows)


TABLE = GeneratedTable(
    "trainability.md", "trainability", "tests/test_trainability.py", render_table
)


def test_docs_table_matches_the_cases():
    TABLE.check()


if __name__ == "__main__":
    TABLE.main()
