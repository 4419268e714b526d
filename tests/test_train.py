"""The trainer: data-parallel equivalences, freezing, NaN policies, resume, the CLI and its errors.

Library-level tests drive :func:`vggjax.train.init_state`, :func:`make_train_step` (through
``train._runner``) and :func:`train_and_evaluate` in this process on the 8 fake CPU
devices of conftest. CLI tests run ``python -m vggjax.train`` in subprocesses with their
own ``XLA_FLAGS`` (1-2 fake devices, so compiles stay small), a timeout, and a
compilation cache private to this test session (runs that compile the same programs,
like the resume runs, then reuse them; nothing depends on the user's cache).

All models are VGG-11-BN at width 1/16 on 32x32 single-channel images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from subproc import ROOT, cpu_env
from train_helpers import NUM_CLASSES, run_steps, tiny_config

from vggjax import optim, stepcache, train, training
from vggjax.errors import VggjaxError

TINY = [
    "--config.model_options.width=0.0625",
    "--config.model_options.head_options.hidden=16",
    "--config.progress=False",
]


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --- data parallelism ----------------------------------------------------------------


def test_mesh_jit_and_pmap_give_equal_losses_on_8_devices():
    assert jax.device_count() == 8
    jit_losses, _, jit_state, _ = run_steps("jit", 0)
    pmap_losses, _, pmap_state, _ = run_steps("pmap", 0)
    assert np.all(np.isfinite(jit_losses)) and len(jit_losses) == 3
    np.testing.assert_allclose(pmap_losses, jit_losses, rtol=0, atol=1e-5)
    # BatchNorm running statistics too: under pmap they must be averaged over all 8
    # devices (2 examples each), not be device 0's own.
    for a, b in zip(leaves(pmap_state.batch_stats), leaves(jit_state.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pmap_batchnorm_uses_the_device_axis():
    config = tiny_config(parallel="pmap")
    tx = optim.make_optimizer(config.optim, steps_per_epoch=10, total_steps=3)
    graphdef, eval_graphdef, make = train.init_state(config, NUM_CLASSES, 1, tx)
    state = jax.eval_shape(make)
    pmap_graphdef = training.runner.with_batchnorm_axis(graphdef, state, "data")
    model = nnx.merge(pmap_graphdef, state.params, state.frozen, state.batch_stats, state.rngs)
    norms = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]
    assert len(norms) == 8 and all(n.axis_name == "data" for n in norms)


def test_one_and_eight_devices_give_equal_losses():
    assert jax.device_count() == 8
    one = run_steps("jit", 1).losses
    eight = run_steps("jit", 0).losses
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)


def test_losses_change_over_steps():
    losses, initial, final, _ = run_steps("jit", 0)
    assert len(set(losses.tolist())) == 3  # a no-op step would repeat the loss
    assert int(final.step) == 3 and int(initial.step) == 0


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_train_step_compiles_once(mode):
    # The state the runner hands out must already have the step's shardings, or step 2
    # compiles a second executable (as costly as the first).
    compiles = run_steps(mode, 0).compiles
    assert compiles == 1, f"{compiles} XLA compilations over 3 steps"


# --- freezing --------------------------------------------------------------------------


def test_frozen_parameters_are_bit_identical_after_training():
    _, initial, final, _ = run_steps("jit", 1, steps=2, freeze=("features/*",))
    frozen_before, frozen_after = leaves(initial.frozen), leaves(final.frozen)
    # VGG-11-BN's backbone: 8 convs (kernel, bias) and 8 BatchNorms (scale, bias).
    assert len(frozen_before) == 32
    for a, b in zip(frozen_before, frozen_after):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(initial.params)
    ]
    assert paths and not any("features" in p for p in paths)
    for p, a, b in zip(paths, leaves(initial.params), leaves(final.params)):
        assert not np.array_equal(a, b), f"trainable {p} did not change"
    # BatchNorm running statistics are not parameters: they still follow the batches.
    assert not all(
        np.array_equal(a, b) for a, b in zip(leaves(initial.batch_stats), leaves(final.batch_stats))
    )


# --- train_and_evaluate: NaN policies, bad input ----------------------------------------


def digits_config(**overrides):
    """``tiny_config`` on the embedded digits (1 device: one small compile)."""
    base = dict(num_devices=1, num_train_steps=3, batch_size=16, eval_batch_size=128)
    return tiny_config(**{**base, **overrides})


def test_step_finiteness_test_is_exact_for_weights_and_names_the_first_bad_leaf():
    """The step's one-reduction finiteness test: NaN/±inf anywhere -> non-finite; huge finite
    weights are not."""
    import jax.numpy as jnp

    big = jnp.full((4, 3), 3e38, jnp.float32)  # its plain sum would overflow to inf
    for bad in (np.nan, np.inf, -np.inf):
        leaves = [jnp.ones(5), big, jnp.ones((2, 2)).at[1, 0].set(bad)]
        sums = training.step.leaf_sums(leaves)
        assert not bool(training.step.all_finite(sums))
        # leaf 2 is second in that order
        assert int(training.step.first_nonfinite(sums, [1, 2, 0])) == 1
    sums = training.step.leaf_sums([jnp.ones(5), big])
    assert (
        bool(training.step.all_finite(sums))
        and int(training.step.first_nonfinite(sums, [0, 1])) == -1
    )
    # Gradients are tested through their squares, which also feed the norm.
    g = [jnp.array([3.0, 4.0]), jnp.array([jnp.nan])]
    sq = training.step.leaf_sums(g, square=True)
    assert float(sq[0]) == 25.0 and int(training.step.first_nonfinite(sq, [0, 1])) == 1


def test_nan_policy_skip_keeps_params_finite_and_finishes(tmp_path, capsys):
    from vggjax import checkpoint, metrics

    # lr 1e38: the loss and gradients of every step are finite, but the update overflows
    # to infinite weights, so every step must be skipped.
    config = digits_config(
        **{"nan_policy": "skip", "optim.learning_rate": 1e38, "checkpoint_every_steps": 1}
    )
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 3
    out, err = capsys.readouterr()
    assert (
        "warning: skipped step 1: gradients finite but the update made "
        "features.conv2_1.kernel non-finite (lr 1e+38): the step's update was discarded\n" in err
    )
    assert "later skipped steps are only counted" in err
    assert "skipped 3 step(s) with non-finite values (nan_policy=skip): first 1, last 3" in out
    recs = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["finite"] for r in recs if r["kind"] == "train"] == [0.0, 0.0, 0.0]
    initial = jax.device_get(_fresh_state(config))  # the same seed: the run's initial state
    with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True) as ckpt:
        assert ckpt.all_steps() == [1, 2, 3]
        after_3, _ = ckpt.restore(initial, step=3)
    # A skipped step keeps the whole state (weights, BatchNorm statistics, which its
    # forward pass had already updated, optimizer state) bit for bit; only the step counts.
    assert int(after_3.step) == 3
    for a, b in zip(leaves(initial.replace(step=0)), leaves(after_3.replace(step=0))):
        assert np.all(np.isfinite(a)) and np.array_equal(a, b)


def _fresh_state(config):
    from vggjax import data

    info = data.get_info(config.dataset)
    tx = optim.make_optimizer(
        config.optim, steps_per_epoch=info.num_train_examples // config.batch_size, total_steps=3
    )
    return train.init_state(config, info.num_classes, info.channels, tx)[2]()


def test_nan_policy_stop_names_the_step(tmp_path):
    # log_every_steps=3: the error must still name the first bad step (2), not the fetch
    # step, and the first layer (in the network's order) whose gradient is non-finite.
    # Checkpoints every step: step 1 (finite) is saved, step 2 is checked before its save.
    config = digits_config(
        **{
            "optim.learning_rate": 1e30,
            "log_every_steps": 3,
            "num_train_steps": 3,
            "checkpoint_every_steps": 1,
        }
    )
    with pytest.raises(VggjaxError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert str(e.value) == (
        "non-finite loss, gradient or weights at step 2: loss nan, "
        "first non-finite gradient in features.conv1_1.kernel "
        "(lr 1e+30); lower optim.learning_rate, enable optim.grad_clip_norm, or set nan_policy=skip"
    )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


# --- the CLI -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cli_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("jax_cache"))


def cli(*args: str, devices: int = 1, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vggjax.train", *args],
        env=cpu_env(devices),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [
        {k: v for k, v in r.items() if k != "images_per_sec"} for r in recs if r["kind"] == "train"
    ]


# The default config, as small as it goes; a constant learning rate so that a run of 3
# steps continued to 6 follows the same schedule as a run of 6 (a cosine schedule depends
# on the total number of steps).
E2E = [
    *TINY,
    "--config.log_every_steps=1",
    "--config.optim.schedule=constant",
    "--config.optim.warmup_epochs=0",
    "--config.optim.learning_rate=0.02",
]


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, cli_cache):
    wd = tmp_path_factory.mktemp("e2e") / "run"
    r = cli(
        f"--workdir={wd}",
        "--config.num_train_steps=6",
        f"--config.compilation_cache={cli_cache}",
        *E2E,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return wd, r


@pytest.mark.slow
def test_cli_default_config_trains_end_to_end(e2e_run):
    wd, r = e2e_run
    recs = train_records(wd)
    assert [x["step"] for x in recs] == [1, 2, 3, 4, 5, 6]
    losses = [x["loss"] for x in recs]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert (wd / "curves.png").stat().st_size > 1000
    assert os.listdir(wd / "tensorboard") and any(
        f.startswith("events.out.tfevents") for f in os.listdir(wd / "tensorboard")
    )
    assert os.listdir(wd / "checkpoints") == ["6"]
    assert json.loads((wd / "config.json").read_text())["model"] == "vgg11_bn"
    assert "test accuracy" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_resume_continues_exactly(e2e_run, tmp_path, cli_cache):
    full, _ = e2e_run
    wd = tmp_path / "run"
    common = [f"--workdir={wd}", f"--config.compilation_cache={cli_cache}", *E2E]
    r = cli("--config.num_train_steps=3", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(wd / "checkpoints")) == ["3"]
    steps_dir = os.path.join(cli_cache, stepcache.SUBDIR)
    exported = {f: os.stat(os.path.join(steps_dir, f)).st_mtime_ns for f in os.listdir(steps_dir)}
    r = cli("--config.num_train_steps=6", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 3" in r.stdout
    # Same config as e2e_run's (another process): its exported train and eval steps were read,
    # none written.
    assert {
        f: os.stat(os.path.join(steps_dir, f)).st_mtime_ns for f in os.listdir(steps_dir)
    } == exported
    assert len(exported) >= 4  # train + eval of e2e_run's config and of this 3-step one
    resumed = train_records(wd)
    assert [x["step"] for x in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed == train_records(full)  # bit-identical: same programs, same data order


# The bad-input cases (config typos, unknown names, bad shapes, unprepared datasets, ...) are
# the table in tests/test_bad_inputs.py, which also generates README's table.
