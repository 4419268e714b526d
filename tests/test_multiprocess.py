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
