"""Crash safety: SIGKILL and resume bit-exactly, SIGTERM preemption, damaged and half-written
checkpoints, failed writes (full disk), non-finite steps naming their layer.

The process tests run ``python -m vggjax.train`` on a tiny config (VGG-11-BN at width
1/16 on the embedded digits, 1 fake CPU device) and share one uninterrupted reference
run; the others drive :func:`vggjax.train.train_and_evaluate` or the Checkpointer in
this process. How a full disk is simulated: orbax's JSON writer (it writes each step's
``meta`` item inside the same background commit as the arrays) is monkeypatched to raise
``OSError(ENOSPC)``: an honest failure of the real write path, without root to mount a
tiny filesystem. An unwritable workdir is a path under a regular file (the tests run as
root, whom ``chmod`` does not stop).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from subproc import ROOT, cpu_env
from train_helpers import tiny_config

from vggjax import checkpoint, metrics, optim, train, training
from vggjax.errors import CheckpointError, WorkdirError

# --- killing and preempting the CLI ------------------------------------------------------

STEPS = 60
# The book's small CIFAR net with Dropout2d (p=0.4): it compiles in a fraction of a
# VGG's time, and its dropout makes the restored RNG streams matter. The default
# warmup-cosine schedule (over STEPS) makes the restored step count matter.
TINY_NET_CONFIG = """
import ml_collections
from vggjax.configs import default

def get_config():
    c = default.get_config()
    c.model = "net_dropout"
    c.channels = 3
    c.model_options = ml_collections.ConfigDict()
    return c
"""
CLI_ARGS = [
    "--config.progress=False",
    "--config.batch_size=16",
    "--config.log_every_steps=1",
    f"--config.num_train_steps={STEPS}",
    "--config.eval_every_epochs=0.25",
    "--config.optim.learning_rate=0.02",
    "--config.optim.warmup_epochs=0.25",
    "--config.keep_checkpoints=2",
]


def start(workdir, cache, *extra: str, in_terminal: bool = False) -> subprocess.Popen:
    """The trainer on the tiny net; ``in_terminal``: in its own session, as a terminal runs a
    foreground job, so that Ctrl-C is a SIGINT to its process group (a background job of a
    non-interactive shell ignores SIGINT)."""
    config_file = os.path.join(os.path.dirname(cache), "tiny_net.py")
    if not os.path.exists(config_file):
        with open(config_file, "w") as f:
            f.write(TINY_NET_CONFIG)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vggjax.train",
            f"--config={config_file}",
            f"--workdir={workdir}",
            f"--config.compilation_cache={cache}",
            *CLI_ARGS,
            *extra,
        ],
        env=cpu_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=in_terminal,
    )


def last_logged_step(workdir) -> int:
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = [line for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines), default=0)


def signal_at(*targets: tuple[subprocess.Popen, object, int, int, bool]) -> list[int]:
    """Send each ``(proc, workdir, step, sig, need_checkpoint)`` its signal once ``proc`` has
    logged ``step`` (and committed a checkpoint, if asked); the steps they had reached.

    All targets are watched in one loop: watching them one after the other let a run that
    was not watched yet finish before its signal (a SIGTERM after the train loop meets the
    default handler).
    """
    reached: dict[int, int] = {}
    deadline = time.monotonic() + 300
    while len(reached) < len(targets) and time.monotonic() < deadline:
        for i, (proc, workdir, step, sig, need_checkpoint) in enumerate(targets):
            if i in reached:
                continue
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(
                    f"the run ended (rc {proc.returncode}) before step {step} was signalled: "
                    f"{err[-2000:]}"
                )
            now = last_logged_step(workdir)
            ckpt_dir = os.path.join(workdir, "checkpoints")
            ckpts = (
                [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
            )
            if now >= step and (ckpts or not need_checkpoint):
                proc.send_signal(sig)
                reached[i] = now
        time.sleep(0.002)
    if len(reached) < len(targets):
        raise AssertionError(
            f"a run hung before its step: reached {reached} of {[t[2] for t in targets]}"
        )
    return [reached[i] for i in range(len(targets))]


def records(workdir, kind: str = "train") -> list[dict]:
    recs = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    # Wall-clock throughput and eval time differ between runs; everything else must be
    # bit-identical.
    return [
        {k: v for k, v in r.items() if k not in ("images_per_sec", "seconds")}
        for r in recs
        if r["kind"] == kind
    ]


@pytest.fixture(scope="module")
def kill_runs(tmp_path_factory):
    """Uninterrupted, SIGKILLed-then-resumed and SIGTERMed-then-resumed runs of the same command."""
    base = tmp_path_factory.mktemp("kill")
    cache = str(base / "jax_cache")
    seed = int(
        os.environ.get("VGGJAX_KILL_SEED") or random.randrange(2**32)
    )  # set it to replay a failure's seed
    rng = random.Random(seed)
    kill_step, term_step = rng.randint(7, STEPS - 12), rng.randint(3, STEPS - 12)
    full, killed, termed = base / "full", base / "killed", base / "termed"
    # The reference compiles first and fills the cache the others load from.
    ref = start(full, cache, "--config.checkpoint_every_steps=5")
    k = start(killed, cache, "--config.checkpoint_every_steps=5")
    t = start(termed, cache, "--config.checkpoint_every_steps=1000")  # only the preemption saves
    try:
        k_reached, t_reached = signal_at(
            (k, killed, kill_step, signal.SIGKILL, True),
            (t, termed, term_step, signal.SIGTERM, False),
        )
        out = {
            name: (p.communicate(timeout=300), p.returncode)
            for name, p in (("full", ref), ("killed", k), ("termed", t))
        }
        kill_ckpts = sorted(int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit())
        term_ckpts = sorted(int(d) for d in os.listdir(termed / "checkpoints") if d.isdigit())
        term_records = records(termed)
        k2 = start(killed, cache, "--config.checkpoint_every_steps=5")
        t2 = start(termed, cache, "--config.checkpoint_every_steps=1000")
        out["killed_resume"] = (k2.communicate(timeout=300), k2.returncode)
        out["termed_resume"] = (t2.communicate(timeout=300), t2.returncode)
    finally:
        for p in (ref, k, t):
            if p.poll() is None:
                p.kill()
                p.communicate()
    return dict(
        seed=seed,
        full=full,
        killed=killed,
        termed=termed,
        out=out,
        kill_step=kill_step,
        k_reached=k_reached,
        term_step=term_step,
        t_reached=t_reached,
        kill_ckpts=kill_ckpts,
        term_ckpts=term_ckpts,
        term_records=term_records,
    )


@pytest.mark.slow
def test_sigkill_then_rerun_continues_bit_identically(kill_runs):
    r = kill_runs
    (_, err), rc = r["out"]["full"]
    assert rc == 0, err[-3000:]
    (_, _), rc = r["out"]["killed"]
    assert rc == -signal.SIGKILL, f"seed {r['seed']}: the run was not killed (rc {rc})"
    # The kill came after a committed checkpoint and before the end.
    assert r["kill_ckpts"] and r["kill_ckpts"][-1] < STEPS, (r["seed"], r["kill_ckpts"])
    (out, err), rc = r["out"]["killed_resume"]
    assert rc == 0, err[-3000:]
    assert f"resumed from step {r['kill_ckpts'][-1]} " in out, out
    full, resumed = records(r["full"]), records(r["killed"])
    assert [x["step"] for x in resumed] == list(
        range(1, STEPS + 1)
    )  # steps after the checkpoint logged once
    # Bit-identical, step by step: data order, dropout RNG, optimizer and schedule state all
    # restored.
    for a, b in zip(full, resumed):
        assert a == b, (
            f"seed {r['seed']}, killed at {r['k_reached']}: step {a['step']} differs: {a} vs {b}"
        )
    assert records(r["killed"], "eval") == records(r["full"], "eval")
    assert len(set(x["loss"] for x in full)) > STEPS // 2  # the losses really move


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits(kill_runs):
    r = kill_runs
    (out, err), rc = r["out"]["termed"]
    assert rc == train.PREEMPTED_EXIT_CODE, err[-3000:]
    assert "Traceback" not in err
    stopped = r["term_records"][-1]["step"]
    # The step in flight was finished, logged and checkpointed; nothing else was saved.
    assert stopped >= r["t_reached"] and r["term_ckpts"] == [stopped], (
        r["seed"],
        r["term_ckpts"],
        stopped,
    )
    assert (
        f"preempted (SIGTERM) at step {stopped}/{STEPS}: "
        f"checkpoint saved in {r['termed'] / 'checkpoints'}/{stopped}; "
        "rerun the same command to resume" in out
    )
    (out2, err2), rc2 = r["out"]["termed_resume"]
    assert rc2 == 0, err2[-3000:]
    assert f"resumed from step {stopped} " in out2
    assert records(r["termed"]) == records(r["full"])
    with checkpoint.Checkpointer(r["termed"] / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [stopped, STEPS] and ckpt.read_meta(stopped)["step"] == stopped


@pytest.mark.slow
def test_a_restart_before_the_first_checkpoint_logs_one_run(kill_runs):
    """Killed before its first checkpoint, the same command starts again from step 0, says so in
    one line, and metrics.jsonl then holds one run's records, the uninterrupted run's."""
    workdir = kill_runs["full"].parent / "early"
    cache = str(kill_runs["full"].parent / "jax_cache")
    first = start(workdir, cache, "--config.checkpoint_every_steps=1000")
    try:
        signal_at((first, workdir, 8, signal.SIGKILL, False))
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert not [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
    assert records(workdir)  # the killed run logged steps
    again = start(workdir, cache, "--config.checkpoint_every_steps=1000")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"no checkpoint in {workdir / 'checkpoints'}: starting from step 0 (the " in out
    assert [r["step"] for r in records(workdir)] == list(range(1, STEPS + 1))
    assert records(workdir) == records(kill_runs["full"])
    assert records(workdir, "eval") == records(kill_runs["full"], "eval")


def _ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_in_one_line_and_a_rerun_resumes(kill_runs, presses):
    """Ctrl-C: the first stops after the step in flight, checkpoints it, says so in one line and
    exits with 130; a second stops at once, also without a traceback, and leaves the newest good
    checkpoint intact. Rerunning resumes and ends as the uninterrupted run."""
    base = kill_runs["full"].parent
    workdir, cache = base / f"ctrl_c_{presses}", str(base / "jax_cache")
    proc = start(workdir, cache, "--config.checkpoint_every_steps=5", in_terminal=True)
    try:
        signal_at((proc, workdir, 8, signal.SIGCONT, True))  # running, with a checkpoint
        _ctrl_c(proc)
        if presses == 2:
            time.sleep(0.05)
            _ctrl_c(proc)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    with checkpoint.Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        newest = ckpt.latest_step()
        assert newest is not None and newest >= 5
    if presses == 1 or "interrupted (Ctrl-C) at step" in out:  # the second came too late
        assert f"interrupted (Ctrl-C) at step {newest}/{STEPS}: checkpoint saved in " in out
        assert "rerun the same command to resume" in out
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1] == (
            f"interrupted (Ctrl-C): stopped at once; the newest checkpoint, "
            f"{workdir / 'checkpoints'}/{newest}, is intact; rerun the same command to resume "
            "from it"
        )
    again = start(workdir, cache, "--config.checkpoint_every_steps=5")
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2[-3000:]
    assert f"resumed from step {newest} " in out2
    assert records(workdir) == records(kill_runs["full"])


# --- in-process: damaged checkpoints, failed writes, workdir checks ---------------------


def digits(**overrides):
    """The tiny net of the CLI tests on the digits, in this process (1 device, evaluation only
    at the end)."""
    base = dict(
        num_devices=1,
        batch_size=16,
        eval_batch_size=128,
        eval_every_epochs=100.0,
        keep_checkpoints=3,
    )
    c = tiny_config(**{**base, **overrides}).to_dict()
    return ml_collections.ConfigDict(
        {**c, "model": "net_dropout", "channels": 3, "model_options": {}}
    )


def vgg_config(**overrides):
    return tiny_config(**{"num_devices": 1, "batch_size": 16, **overrides})


def step_dirs(path) -> list[str]:
    return sorted((d for d in os.listdir(path) if d.isdigit()), key=int)


# A failed tensorstore read leaves callbacks aimed at orbax's closed asyncio loop; Python
# reports them as "Exception ignored ... Event loop is closed". Harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_latest_checkpoint_is_skipped_with_a_warning(tmp_path, capsys):
    wd = tmp_path / "run"
    train.train_and_evaluate(digits(num_train_steps=4, checkpoint_every_steps=2), str(wd))
    first = records(wd)
    ckdir = wd / "checkpoints"
    assert step_dirs(ckdir) == ["2", "4"]
    # Step 4's array files were truncated (the disk filled up under it) and a save of a
    # step 6 was killed half-way (an uncommitted tmp directory).
    data_files = [
        p for p in (ckdir / "4" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for p in data_files:
        os.truncate(p, 5)
    shutil.copytree(ckdir / "2", ckdir / "6.orbax-checkpoint-tmp")
    os.remove(ckdir / "6.orbax-checkpoint-tmp" / "_CHECKPOINT_METADATA")
    capsys.readouterr()

    summary = train.train_and_evaluate(digits(num_train_steps=6, checkpoint_every_steps=2), str(wd))
    out, err = capsys.readouterr()
    assert summary["steps"] == 6
    assert (
        f"warning: checkpoint step(s) 4 in {ckdir} could not be read (truncated or half-written); "
        "resuming from step 2, the newest good one" in err
    )
    assert "resumed from step 2 " in out
    again = records(wd)
    assert [x["step"] for x in again] == [1, 2, 3, 4, 5, 6]
    assert again[:4] == first  # steps 3 and 4 trained again from step 2: the same bits
    assert step_dirs(ckdir) == ["2", "4", "6"] and not (ckdir / "6.orbax-checkpoint-tmp").exists()
    with checkpoint.Checkpointer(ckdir, read_only=True) as ckpt:
        assert ckpt.read_meta(4) == {
            "step": 4,
            "model": "net_dropout",
        }  # the damaged step was rewritten


def _enospc(monkeypatch, fail_from_call: int = 1, gate: threading.Event | None = None):
    """Make orbax's JSON item writer fail with ENOSPC from its ``fail_from_call``-th write
    (optionally after ``gate``)."""
    original = ocp.JsonCheckpointHandler._save_fn
    calls = [0]

    async def save_fn(self, x, directory):
        calls[0] += 1
        if gate is not None:
            gate.wait(60)
        if calls[0] >= fail_from_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return await original(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", save_fn)
    return calls


def test_old_checkpoint_survives_until_the_new_one_is_committed(tmp_path, monkeypatch):
    state = {"w": jnp.arange(4.0)}
    with checkpoint.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(1, state, {"s": 1})
        ckpt.wait()
    # A slow commit: while step 2 is being written, step 1 (the only one kept) must stay.
    gate = threading.Event()
    monkeypatch.setattr(
        ocp.JsonCheckpointHandler, "_save_fn", _gated(ocp.JsonCheckpointHandler._save_fn, gate)
    )
    with checkpoint.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        assert ckpt.save(2, {"w": state["w"] * 2}, {"s": 2})
        time.sleep(0.3)
        assert "1" in step_dirs(tmp_path) and "2" not in step_dirs(tmp_path)
        gate.set()
        ckpt.wait()
    assert step_dirs(tmp_path) == ["2"]


def _gated(original, gate):
    async def save_fn(self, x, directory):
        gate.wait(60)
        return await original(self, x, directory)

    return save_fn


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with checkpoint.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(1, {"w": jnp.arange(4.0)}, {"s": 1})
        ckpt.wait()
    _enospc(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        with checkpoint.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
            assert ckpt.save(2, {"w": jnp.arange(4.0) * 2}, {"s": 2})
            ckpt.wait()
    assert str(e.value) == (
        f"could not write checkpoint step 2 to {tmp_path}: No space left on device; "
        "the last committed checkpoint, step 1, is intact: "
        "free disk space (or fix the directory) and rerun the same command to resume"
    )
    monkeypatch.undo()
    with checkpoint.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        assert ckpt.all_steps() == [1]
        restored, meta = ckpt.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert meta == {"s": 1} and np.array_equal(np.asarray(restored["w"]), np.arange(4.0))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_trainer_reports_full_disk_at_save_time_and_resumes_after(tmp_path, monkeypatch, capsys):
    wd = tmp_path / "run"
    # Meta writes: step 2's succeeds, step 4's finds the disk full.
    _enospc(monkeypatch, fail_from_call=2)
    config = digits(num_train_steps=6, checkpoint_every_steps=2, keep_checkpoints=1)
    with pytest.raises(CheckpointError) as e:
        train.train_and_evaluate(config, str(wd))
    assert str(e.value) == (
        f"could not write checkpoint step 4 to {wd / 'checkpoints'}: No space left on device; "
        "the last committed checkpoint, step 2, is intact: "
        "free disk space (or fix the directory) and rerun the same command to resume"
    )
    assert step_dirs(wd / "checkpoints") == ["2"]
    monkeypatch.undo()  # space freed
    capsys.readouterr()
    assert train.train_and_evaluate(config, str(wd))["steps"] == 6
    assert "resumed from step 2 " in capsys.readouterr().out
    assert step_dirs(wd / "checkpoints") == ["6"]
    assert [x["step"] for x in records(wd)] == [1, 2, 3, 4, 5, 6]


def test_full_disk_before_training_is_a_clear_error(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        training.workdir.shutil, "disk_usage", lambda p: usage._replace(free=5 << 20)
    )
    with pytest.raises(WorkdirError) as e:
        train.train_and_evaluate(digits(num_train_steps=2), str(tmp_path / "run"))
    # width 1/16: 0.1 MiB of state; the 16 MiB reserve for metrics decides.
    assert str(e.value) == (
        f"not enough disk space in --workdir={tmp_path / 'run'}: 5 MiB free, "
        "a checkpoint needs about 16 MiB; "
        "free some space or pick another --workdir"
    )
    assert os.listdir(tmp_path / "run") == []


def test_checkpoint_size_estimate_matches_a_saved_state(tmp_path):
    config = vgg_config()
    tx = optim.make_optimizer(config.optim, steps_per_epoch=89, total_steps=3)
    make = train.init_state(config, 10, 1, tx)[2]
    state = jax.jit(make)()
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "1" / "state").rglob("*") if p.is_file())
    estimate = training.state.nbytes(jax.eval_shape(make))
    # Orbax compresses (zstd) and adds metadata: the estimate is an upper bound of the arrays.
    assert 0.3 * estimate < on_disk < estimate + (1 << 20), (on_disk, estimate)


# --- non-finite steps -----------------------------------------------------------------------


def test_forward_order_follows_the_network():
    config = vgg_config()
    tx = optim.make_optimizer(config.optim, steps_per_epoch=89, total_steps=3)
    graphdef, _, make = train.init_state(config, 10, 1, tx)
    state = jax.eval_shape(make)
    names = train.leaf_names(state.params)
    order = [names[i] for i in train.forward_order(graphdef, state, (1, 32, 32, 1))]
    assert sorted(order) == sorted(names) and len(order) == 38
    assert order[:6] == [
        "features.conv1_1.kernel",
        "features.conv1_1.bias",
        "features.bn1_1.scale",
        "features.bn1_1.bias",
        "features.conv2_1.kernel",
        "features.conv2_1.bias",
    ]
    assert order[-2:] == ["head.fc8.kernel", "head.fc8.bias"]
    assert names[:2] == [
        "features.bn1_1.bias",
        "features.bn1_1.scale",
    ]  # what tree order would have said


def test_describe_nonfinite_names_the_step_and_layer():
    names = ["features.conv1_1.kernel", "features.conv1_1.bias", "head.fc8.kernel"]
    m = dict(loss=float("nan"), lr=0.5, nonfinite_grad=1, nonfinite_param=0)
    assert (
        train.describe_nonfinite(7, m, names)
        == "step 7: loss nan, first non-finite gradient in features.conv1_1.bias (lr 0.5)"
    )
    m = dict(loss=2.0, lr=1e38, nonfinite_grad=-1, nonfinite_param=2)
    assert (
        train.describe_nonfinite(3, m, names)
        == "step 3: gradients finite but the update made head.fc8.kernel non-finite (lr 1e+38)"
    )


def test_rewind_metrics_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "kind": "train", "loss": s} for s in range(1, 6)] + [
        {"step": 5, "kind": "summary"}
    ]
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 6, "kind": "tr'
    )  # killed mid-write
    assert train.rewind_metrics(str(path), 3) == 4
    assert [r["step"] for r in metrics.read_jsonl(str(path))] == [1, 2, 3]
    assert train.rewind_metrics(str(path), 3) == 0
