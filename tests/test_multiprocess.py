"""Multi-host training, simulated: two local processes joined by ``jax.distributed``.

Each process gets 2 fake CPU devices (its own ``XLA_FLAGS``) and CPU collectives via
gloo; the coordinator listens on a free 127.0.0.1 port. Every process is killed when the
test ends, fails, or runs past its time limit (one process dying would otherwise leave
the other blocked in a collective).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from subproc import ROOT, cpu_env

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES_PER_PROCESS = 2
TIMEOUT = 300

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands: list[list[str]], timeout: float = TIMEOUT) -> list[tuple[int, str]]:
    """Run ``commands`` together; ``[(returncode, output)]``. All are killed on the first
    failure or at ``timeout`` seconds, so a stuck collective cannot hang the test run."""
    procs = [
        subprocess.Popen(
            c,
            env=cpu_env(DEVICES_PER_PROCESS),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in commands
    ]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        outputs = [p.communicate()[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs)]


def check(results: list[tuple[int, str]]) -> None:
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"process {i} exited with {rc}:\n{out[-4000:]}"


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    out = tmp_path / "losses.json"
    address = f"127.0.0.1:{free_port()}"
    worker = os.path.join(HERE, "mp_worker.py")
    check(run_all([[sys.executable, worker, address, "2", str(i), str(out)] for i in range(2)]))
    got = json.loads(out.read_text())
    assert got["processes"] == 2 and got["devices"] == 2 * DEVICES_PER_PROCESS

    # The same steps in this one process, over its 8 devices (a cached run that
    # test_train's equivalence tests share).
    from train_helpers import run_steps

    reference = run_steps("jit", 0).losses
    assert len(got["losses"]) == 3 and np.all(np.isfinite(got["losses"]))
    np.testing.assert_allclose(got["losses"], reference, rtol=0, atol=1e-5)


def test_cli_trains_across_two_processes(tmp_path):
    wd = tmp_path / "run"
    address = f"127.0.0.1:{free_port()}"
    args = [
        f"--workdir={wd}",
        "--config.num_train_steps=3",
        "--config.batch_size=16",
        "--config.log_every_steps=1",
        "--config.model_options.width=0.0625",
        "--config.model_options.head_options.hidden=16",
        "--config.optim.schedule=constant",
        "--config.optim.warmup_epochs=0",
        "--config.progress=False",
        "--config.eval_batch_size=120",
        "--config.compilation_cache=",
        f"--coordinator_address={address}",
        "--num_processes=2",
        "--cpu_collectives=gloo",
    ]
    results = run_all(
        [[sys.executable, "-m", "vggjax.train", *args, f"--process_id={i}"] for i in range(2)]
    )
    check(results)
    with open(wd / "metrics.jsonl") as f:
        recs = [json.loads(line) for line in f]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["finite"] == 1.0 for r in train)
    evals = [r for r in recs if r["kind"] == "eval"]
    assert evals and evals[-1]["examples"] == 359  # both processes' halves of the test split
    assert os.listdir(wd / "checkpoints") == ["3"]
    assert "done:" in results[0][1] and "done:" not in results[1][1]  # only process 0 reports


def _records(workdir) -> list[dict]:
    """The run's train and eval records without wall-clock fields (they differ between runs)."""
    with open(workdir / "metrics.jsonl") as f:
        recs = [json.loads(line) for line in f]
    return [
        {k: v for k, v in r.items() if k not in ("images_per_sec", "seconds")}
        for r in recs
        if r["kind"] in ("train", "eval")
    ]


def test_pod_preemption_every_process_saves_the_same_step_and_resumes(tmp_path):
    """A Cloud TPU maintenance event sends SIGTERM to every host: both processes stop after the
    same step, checkpoint it and exit with 143; rerunning resumes and matches an uninterrupted
    run at every logged step."""
    import signal

    steps = 40
    cache = str(tmp_path / "jax_cache")

    def launch(workdir) -> list[subprocess.Popen]:
        address = f"127.0.0.1:{free_port()}"
        args = [
            f"--workdir={workdir}",
            f"--config.num_train_steps={steps}",
            "--config.batch_size=16",
            "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=1000",  # only the preemption saves mid-run
            "--config.optim.schedule=constant",
            "--config.optim.warmup_epochs=0",
            "--config.model_options.width=0.0625",
            "--config.model_options.head_options.hidden=16",
            "--config.progress=False",
            "--config.eval_batch_size=120",
            "--config.eval_every_epochs=0.25",
            f"--config.compilation_cache={cache}",
            f"--coordinator_address={address}",
            "--num_processes=2",
            "--cpu_collectives=gloo",
        ]
        return [
            subprocess.Popen(
                [sys.executable, "-m", "vggjax.train", *args, f"--process_id={i}"],
                env=cpu_env(DEVICES_PER_PROCESS),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]

    def finish(procs) -> list[tuple[int, str]]:
        try:
            return [(p.wait(timeout=TIMEOUT), p.communicate()[0]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()

    full, preempted = tmp_path / "full", tmp_path / "preempted"
    check(finish(launch(full)))
    procs = launch(preempted)
    deadline = time.monotonic() + TIMEOUT
    while not (preempted / "metrics.jsonl").exists() or not any(
        json.loads(line)["step"] >= 12 for line in (preempted / "metrics.jsonl").open()
    ):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = finish(procs)
    assert [rc for rc, _ in results] == [143, 143], [out[-3000:] for _, out in results]
    assert all("Traceback" not in out for _, out in results)
    saved = sorted(int(d) for d in os.listdir(preempted / "checkpoints") if d.isdigit())
    assert len(saved) == 1 and 12 <= saved[0] < steps, saved  # one step, the same for both
    assert f"preempted (preemption notice) at step {saved[0]}/{steps}" in results[0][1]
    assert [r["step"] for r in _records(preempted) if "loss" in r][-1] == saved[0]

    resumed = finish(launch(preempted))
    check(resumed)
    assert f"resumed from step {saved[0]} " in resumed[0][1]
    assert _records(preempted) == _records(full)
