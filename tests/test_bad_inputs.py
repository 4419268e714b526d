"""The table of user mistakes: each one ends in ONE line that says what to do, never a traceback.

``CASES`` is the single source of the table in docs/bad-inputs.md:
``python tests/test_bad_inputs.py --write-docs`` rewrites that table, and
``test_docs_table_matches_the_cases`` fails when the two drift apart.

How each row is tested: rows with ``cli`` args run ``python -m vggjax.train`` in a
subprocess (flag parsing exists only there; the others are representatives of the
in-process rows), asserting exit status 2, no "Traceback" on stderr and exactly one
stderr line ``error: <message>``. Rows with ``overrides`` call
:func:`vggjax.train.train_and_evaluate` in this process — the function the CLI's main
calls, whose :class:`~vggjax.errors.VggjaxError` the CLI prints as that one line —
asserting the exact one-line message and that the existing workdir was not touched.

Placeholders in messages: WORKDIR (a workdir holding a checkpoint of the tiny VGG-11-BN
at step 1), EMPTY_DIR (an empty directory), A_FILE (a regular file).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import pytest
from repo import GeneratedTable
from subproc import ROOT, cpu_env

TINY = [
    "--config.model_options.width=0.0625",
    "--config.model_options.head_options.hidden=16",
    "--config.progress=False",
]
# Foreign C++ log lines (absl's pre-init warning, TF/XLA notices) that are not ours to format.
FOREIGN = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")

VGG_NAMES = (
    "net, net_batchnorm, net_depth, net_dropout, net_res, net_res_deep, net_width, overfeat_slim, "
    "two_conv_bn, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg16_fc_conv_400, vgg19, "
    "vgg19_bn, wsdr, wsdr_bn"
)


@dataclasses.dataclass(frozen=True)
class Case:
    mistake: str  # what the user did wrong (table column 1)
    given: str  # what they typed or wrote (table column 2)
    message: str  # the exact error line, without "error: "
    overrides: dict[str, Any] | None = None  # in-process: dotted config keys -> values
    cli: tuple[str, ...] | None = None  # subprocess: extra command-line arguments
    devices: int = 1  # fake CPU devices of the subprocess
    workdir: str = "WORKDIR"  # the --workdir (a placeholder expression)


CASES: dict[str, Case] = {
    "override_key_typo": Case(
        "typo in a `--config.` override",
        "`--config.batch_sise=64`",
        "unknown config key 'config.batch_sise' "
        '(Did you mean "batch_size" instead of "batch_sise"?)',
        cli=("--config.batch_sise=64",),
    ),
    "nested_override_typo": Case(
        "unknown nested key",
        "`--config.optim.lr=0.1`",
        "unknown config key 'config.optim.lr'; see the config file for the valid keys",
        cli=("--config.optim.lr=0.1",),
    ),
    "override_wrong_type": Case(
        "wrong type on the command line",
        "`--config.batch_size=abc`",
        "flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'",
        cli=("--config.batch_size=abc",),
    ),
    "missing_config_file": Case(
        "config file does not exist",
        "`--config=no/such/config.py`",
        "cannot load the --config file: [Errno 2] No such file or directory: 'no/such/config.py'",
        cli=("--config=no/such/config.py",),
    ),
    "config_file_key_typo": Case(
        "typo in a config file",
        "`config.batch_sise = 64` in a config file",
        "unknown config key 'config.batch_sise' in the config file; "
        "did you mean 'config.batch_size'?",
        overrides={"batch_sise": 64},
    ),
    "config_file_optim_typo": Case(
        "unknown optimizer field in a config file",
        "`config.optim.lr = 0.1`",
        "unknown config key 'config.optim.lr' in the config file; "
        "see vggjax/configs/default.py for the valid keys",
        overrides={"optim.lr": 0.1},
    ),
    "batch_size_float": Case(
        "batch size of the wrong type",
        "`config.batch_size = 2.5`",
        "config.batch_size must be a positive integer, got 2.5",
        overrides={"batch_size": 2.5},
    ),
    "negative_steps": Case(
        "negative step count",
        "`--config.num_train_steps=-1`",
        "config.num_train_steps must be an integer >= 0 (0 = automatic), got -1",
        overrides={"num_train_steps": -1},
    ),
    "keep_zero_checkpoints": Case(
        "keep no checkpoints",
        "`--config.keep_checkpoints=0`",
        "config.keep_checkpoints must be an integer >= 1, got 0",
        overrides={"keep_checkpoints": 0},
    ),
    "unknown_model": Case(
        "unknown model name",
        "`--config.model=vgg12`",
        f"unknown model 'vgg12'; valid: {VGG_NAMES}",
        cli=("--config.model=vgg12",),
        overrides={"model": "vgg12"},
    ),
    "model_option_typo": Case(
        "typo in `model_options`",
        "`config.model_options.widht = 0.5`",
        "unknown model_options key 'widht' for model 'vgg11_bn'; did you mean 'width'? "
        "valid: bias_init, dropout, head, head_options, init, norm_eps, norm_momentum, "
        "param_dtype, width",
        overrides={"model_options.widht": 0.5},
    ),
    "unknown_initializer": Case(
        "unknown initializer",
        "`--config.model_options.init=he_nromal`",
        "unknown initializer 'he_nromal'; valid: constant, glorot_normal, glorot_uniform, "
        "he_normal, he_uniform, kaiming_normal, kaiming_uniform, lecun_normal, normal, "
        "torch_default, torchvision, trunc_normal, xavier_normal, xavier_uniform, zeros",
        overrides={"model_options.init": "he_nromal"},
    ),
    "unknown_head": Case(
        "unknown head",
        "`--config.model_options.head=mlp`",
        "unknown head 'mlp'; valid: fc, fc_conv, gap",
        overrides={"model_options.head": "mlp"},
    ),
    "unknown_schedule": Case(
        "unknown learning-rate schedule",
        "`--config.optim.schedule=cosine_warm`",
        "unknown schedule 'cosine_warm'; valid: constant, piecewise, plateau, step, warmup_cosine",
        overrides={"optim.schedule": "cosine_warm"},
    ),
    "momentum_out_of_range": Case(
        "momentum out of range",
        "`--config.optim.momentum=1.5`",
        "momentum must be in [0, 1), got 1.5",
        overrides={"optim.momentum": 1.5},
    ),
    "bad_dtype": Case(
        "unsupported compute dtype",
        "`--config.dtype=float16`",
        "dtype must be 'float32' or 'bfloat16', got 'float16'",
        overrides={"dtype": "float16"},
    ),
    "bad_parallel": Case(
        "unknown parallel mode",
        "`--config.parallel=dp`",
        "unknown parallel mode 'dp'; valid: jit, pmap",
        overrides={"parallel": "dp"},
    ),
    "bad_compute_policy": Case(
        "unknown compute policy",
        "`--config.compute=gpu`",
        "unknown compute mode 'gpu'; valid: auto, xla, cpu (e.g. compute='auto')",
        overrides={"compute": "gpu"},
    ),
    "bad_nan_policy": Case(
        "unknown NaN policy",
        "`--config.nan_policy=ignore`",
        "unknown nan_policy 'ignore'; valid: skip, stop",
        overrides={"nan_policy": "ignore"},
    ),
    "bad_freeze": Case(
        "freeze globs of the wrong type",
        "`config.freeze = 3`",
        "config.freeze must be parameter-path globs such as ('features/*',), got 3",
        overrides={"freeze": 3},
    ),
    "image_too_small": Case(
        "images too small for the network",
        "`--config.image_size=16` with VGG",
        "vgg11_bn needs inputs of at least 32x32 (5 2x2 max-poolings), got 16x16",
        overrides={"image_size": 16},
    ),
    "batch_not_divisible": Case(
        "batch not divisible by the devices",
        "`--config.batch_size=3` on 2 devices",
        "batch_size=3 is not divisible by the 2 devices; use a multiple of 2 such as 2 or 4",
        cli=("--config.batch_size=3",),
        devices=2,
    ),
    "eval_batch_not_divisible": Case(
        "eval batch not divisible by the devices",
        "`--config.eval_batch_size=12` on 8 devices",
        "eval_batch_size=12 is not divisible by the 8 devices; use a multiple of 8 such as 8 or 16",
        overrides={"eval_batch_size": 12, "num_devices": 0},
    ),
    "unknown_dataset": Case(
        "unknown dataset",
        "`--config.dataset=no_such_dataset`",
        "unknown dataset 'no_such_dataset'; the embedded (offline) ones are vggjax_digits, "
        "vggjax_digits2, vggjax_digits_multilabel, and any name in tfds.list_builders() works "
        "(prepared, or downloaded on first use)",
        overrides={"dataset": "no_such_dataset"},
    ),
    "dataset_not_prepared": Case(
        "dataset not prepared, downloads off",
        "`--config.dataset=cifar10 --config.data_dir=EMPTY_DIR --config.download=False`",
        "dataset 'cifar10' is not prepared in EMPTY_DIR and downloads are off "
        "(--config.download=False or VGGJAX_OFFLINE=1); allow them, or on a machine with network "
        "run `tfds build cifar10 --data_dir EMPTY_DIR` "
        '(or `python -c "import tensorflow_datasets as tfds; '
        "tfds.builder('cifar10', data_dir='EMPTY_DIR').download_and_prepare()\"`), "
        "then copy its cifar10 folder into EMPTY_DIR",
        overrides={"dataset": "cifar10", "data_dir": "EMPTY_DIR", "download": False},
    ),
    "download_not_bool": Case(
        "download switch of the wrong type",
        '`config.download = "no"` in a config file',
        "config.download must be True or False, got 'no'",
        overrides={"download": "no"},
    ),
    "class_out_of_range": Case(
        "class subset out of range",
        "`config.classes = (0, 42)` on digits",
        "class id 42 is out of range for dataset 'vggjax_digits': valid ids are 0..9 "
        "(0 0, 1 1, 2 2, 3 3, 4 4, 5 5, 6 6, 7 7, 8 8, 9 9)",
        overrides={"classes": (0, 42)},
    ),
    "weights_file_as_init_from": Case(
        "a weight file instead of a run directory",
        "`--config.init_from=A_FILE` (e.g. a `.pth`)",
        "--config.init_from=A_FILE is a file, not a vggjax run directory; "
        "point it at the --workdir of an earlier run "
        "(PyTorch or Keras weights: convert them with vggjax.convert first)",
        overrides={"init_from": "A_FILE"},
        workdir="FRESH",
    ),
    "init_from_missing": Case(
        "`init_from` directory does not exist",
        "`--config.init_from=/no/such/run`",
        "--config.init_from=/no/such/run: no such directory; "
        "point it at the --workdir of an earlier run",
        overrides={"init_from": "/no/such/run"},
        workdir="FRESH",
    ),
    "init_from_not_a_run": Case(
        "`init_from` directory holds no checkpoint",
        "`--config.init_from=EMPTY_DIR`",
        "--config.init_from=EMPTY_DIR holds no vggjax checkpoint (no checkpoints/ folder); "
        "point it at the --workdir of an earlier run",
        overrides={"init_from": "EMPTY_DIR"},
        workdir="FRESH",
    ),
    "foreign_class_count": Case(
        "resume a workdir trained with another class count",
        "`--config.num_classes=5` on a 10-class run's workdir",
        "checkpoint step 1 in WORKDIR/checkpoints does not fit this model, 4 mismatched: "
        "params.head.fc8.bias (10,) in checkpoint vs (5,) in model, "
        "params.head.fc8.kernel (16, 10) in checkpoint vs (16, 5) in model, "
        "opt_state.1.trace.head.fc8.bias (10,) in checkpoint vs (5,) in model and 1 more; "
        "this workdir belongs to another architecture or class count: use a new --workdir, "
        "or --config.init_from=WORKDIR/checkpoints to start from its weights",
        overrides={"num_classes": 5},
    ),
    "foreign_architecture": Case(
        "resume a workdir of another architecture",
        "`--config.model=vgg13_bn` on a VGG-11 run's workdir",
        "checkpoint step 1 in WORKDIR/checkpoints does not fit this model, 20 mismatched: "
        "params.features.bn1_2.bias missing from checkpoint, "
        "params.features.bn1_2.scale missing from checkpoint, "
        "params.features.bn2_2.bias missing from checkpoint and 17 more; "
        "this workdir belongs to another architecture or class count: use a new --workdir, "
        "or --config.init_from=WORKDIR/checkpoints to start from its weights",
        overrides={"model": "vgg13_bn"},
    ),
    "unwritable_workdir": Case(
        "workdir cannot be written",
        "`--workdir=A_FILE/run` (a path under a regular file)",
        "cannot write to --workdir=A_FILE/run: Not a directory; pick a directory you can write to",
        cli=(),
        overrides={},
        workdir="A_FILE/run",
    ),
}


def expected_ok(name: str, line: str) -> bool:
    return line == CASES[name].message


def render_table() -> str:
    rows = [
        "| # | Mistake | What was given "
        "| The one-line error (stderr: `error: ...`, exit status 2) |",
        "|---|---|---|---|",
    ]
    for i, name in enumerate(CASES, 1):
        case = CASES[name]
        msg = case.message.replace("|", "\\|").replace("`", "'")
        rows.append(f"| {i} | {case.mistake} | {case.given} | {msg} |")
    return "\n".join(rows)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """The placeholder directories; WORKDIR holds a real checkpoint of the tiny VGG at step 1."""
    import jax

    from vggjax import checkpoint, data, optim, train

    base = tmp_path_factory.mktemp("bad")
    wd, empty, a_file = base / "workdir", base / "empty", base / "weights.pth"
    empty.mkdir()
    a_file.write_bytes(b"not a checkpoint")
    config = base_config()
    info = data.get_info(config.dataset)
    tx = optim.make_optimizer(
        config.optim, steps_per_epoch=info.num_train_examples // config.batch_size, total_steps=3
    )
    state = jax.jit(train.init_state(config, info.num_classes, info.channels, tx)[2])()
    with checkpoint.Checkpointer(wd / "checkpoints") as ckpt:
        ckpt.save(1, state, {"step": 1, "model": config.model}, force=True)
    (wd / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 2.3}\n')
    return {
        "WORKDIR": str(wd),
        "EMPTY_DIR": str(empty),
        "A_FILE": str(a_file),
        "FRESH": str(base / "fresh"),
    }


def base_config():
    from train_helpers import tiny_config

    return tiny_config(num_devices=1, num_train_steps=3, batch_size=16, eval_batch_size=128)


def fill(text: str, places: dict[str, str]) -> str:
    for k in sorted(places, key=len, reverse=True):
        text = text.replace(k, places[k])
    return text


def unfill(text: str, places: dict[str, str]) -> str:
    for k in sorted(places, key=lambda k: len(places[k]), reverse=True):
        text = text.replace(places[k], k)
    return text


def files(path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, names in os.walk(path):
        for n in names:
            st = os.stat(os.path.join(root, n))
            out[os.path.relpath(os.path.join(root, n), path)] = (st.st_size, st.st_mtime_ns)
    return out


def config_with(overrides: dict[str, Any], places: dict[str, str]):
    import ml_collections
    from train_helpers import override

    filled = {k: fill(v, places) if isinstance(v, str) else v for k, v in overrides.items()}
    # A ConfigDict refuses a value of another type, so override a plain dict and build one
    # from it, as a config file or a library user's script can.
    return ml_collections.ConfigDict(override(base_config().to_dict(), **filled))


IN_PROCESS = [n for n, c in CASES.items() if c.overrides is not None]
SUBPROCESS = [n for n, c in CASES.items() if c.cli is not None]


@pytest.mark.parametrize("name", IN_PROCESS)
def test_bad_input_in_process_is_one_line(name, places):
    from vggjax import train
    from vggjax.errors import VggjaxError

    case = CASES[name]
    before = files(places["WORKDIR"])
    with pytest.raises(VggjaxError) as e:
        train.train_and_evaluate(config_with(case.overrides, places), fill(case.workdir, places))
    line = str(e.value)
    assert "\n" not in line
    assert expected_ok(name, unfill(line, places)), unfill(line, places)
    assert files(places["WORKDIR"]) == before  # nothing written, nothing moved
    assert os.listdir(places["EMPTY_DIR"]) == []


@pytest.fixture(scope="module")
def cli_runs(places):
    """Every subprocess row, run concurrently: ``{name: (returncode, stderr)}``."""
    procs = {}
    for name in SUBPROCESS:
        case = CASES[name]
        args = [fill(a, places) for a in case.cli] + [
            f"--workdir={fill(case.workdir, places)}",
            *TINY,
        ]
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "vggjax.train", *args],
            env=cpu_env(case.devices),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    out = {}
    try:
        for name, p in procs.items():
            _, err = p.communicate(timeout=300)
            out[name] = (p.returncode, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_cli_is_one_line_without_traceback(name, cli_runs, places):
    rc, err = cli_runs[name]
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(FOREIGN)]
    assert "Traceback" not in err, err
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected_ok(name, unfill(lines[0][len("error: ") :], places)), lines[0]


def test_every_row_is_tested_and_the_table_is_big_enough():
    assert len(CASES) >= 15
    assert all(c.overrides is not None or c.cli is not None for c in CASES.values())
    assert all(c.message for c in CASES.values()) and len(
        {c.message for c in CASES.values()}
    ) == len(CASES)


TABLE = GeneratedTable("bad-inputs.md", "bad-inputs", "tests/test_bad_inputs.py", render_table)


def test_docs_table_matches_the_cases():
    TABLE.check()


if __name__ == "__main__":
    TABLE.main()
