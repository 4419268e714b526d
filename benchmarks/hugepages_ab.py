"""Does the huge-page restart earn its place? An A/B of the trainer and the ImageNet-size step.

The CLI can restart itself with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (``vggjax.hostmem``).
This script times, in alternating turns (A B A B ...), each with a fresh process:

* ``trainer``: ``python -m vggjax.train`` on the default config (README command 1), with
  ``VGGJAX_HUGEPAGES=1`` (the restart) and ``=0`` (none): the wall time of the whole command
  (the restart included), the loop's own seconds (its summary record), and the process tree's
  minor page faults and system CPU time (``getrusage(RUSAGE_CHILDREN)``).
* ``step``: ``python -m vggjax.bench --arch vgg16 --size 224 --batch 8`` (the ImageNet config's
  network and image size; batch 8 on 2 cores) with and without ``--no-hugepages``: the median
  step time and its page faults and system CPU per step (the bench's ``jax.host``).

    python benchmarks/hugepages_ab.py --reps 4 --step-reps 2   # the record: ~9 min
    python benchmarks/hugepages_ab.py --reps 2 --step-reps 1   # a quick look

Writes ``experiments/results/bench/hugepages_ab.json`` and ``hugepages_ab.png``. Run it on a quiet
machine: other work on the cores moves both arms, but not equally.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "bench")
sys.path.insert(0, ROOT)


def _children() -> tuple[int, float]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_minflt, r.ru_stime


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env.pop("GLIBC_TUNABLES", None)
    return env


def trainer_turn(hugepages: bool, tmp: str, turn: int) -> dict:
    workdir = os.path.join(tmp, f"train-{int(hugepages)}-{turn}")
    cmd = [sys.executable, "-m", "vggjax.train", f"--workdir={workdir}", "--config.progress=False"]
    # A fresh compilation cache per turn: both arms compile cold, as a first run does.
    cmd.append(f"--config.compilation_cache={os.path.join(workdir, 'cache')}")
    faults0, sys0 = _children()
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=_env(VGGJAX_HUGEPAGES="1" if hugepages else "0"),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    faults1, sys1 = _children()
    if proc.returncode:
        raise SystemExit(f"trainer turn failed: {proc.stderr[-2000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        summary = [json.loads(line) for line in f if '"summary"' in line][-1]
    return {
        "hugepages": hugepages,
        "wall_s": round(wall, 2),
        "loop_s": summary["seconds"],
        "test_accuracy": summary["accuracy"],
        "minor_faults": faults1 - faults0,
        "system_cpu_s": round(sys1 - sys0, 2),
    }


def step_turn(hugepages: bool, tmp: str, turn: int, steps: int) -> dict:
    out = os.path.join(tmp, f"step-{int(hugepages)}-{turn}.json")
    cmd = [
        sys.executable, "-m", "vggjax.bench", "--arch", "vgg16", "--size", "224", "--batch", "8",
        "--steps", str(steps), "--no-control", "--no-pipeline", "--no-warm-probe", "--out", out,
    ]  # fmt: skip
    if not hugepages:
        cmd.append("--no-hugepages")
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"step turn failed: {proc.stderr[-2000:]}")
    with open(out) as f:
        record = json.load(f)
    step, host = record["jax"]["step"], record["jax"]["host"]
    return {
        "hugepages": hugepages,
        "step_ms": round(1000 * step["median_s"], 1),
        "spread_pct": round(step["spread_pct"], 1),
        "page_faults_per_step": host["page_faults_per_step"],
        "system_cpu_s_per_step": round(host["system_cpu_s_per_step"], 3),
        "glibc_tunables": record["machine"].get("glibc_tunables"),
    }


def summarize(turns: list[dict], key: str) -> dict:
    on = [t[key] for t in turns if t["hugepages"]]
    off = [t[key] for t in turns if not t["hugepages"]]
    return {
        "hugepages_median": statistics.median(on),
        "no_hugepages_median": statistics.median(off),
        # > 1: the restart is faster (for page faults: that many times fewer)
        "speedup": statistics.median(off) / statistics.median(on),
    }


def plot(result: dict, path: str) -> None:
    from vggjax import experiment

    plt = experiment.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (name, key, unit) in zip(
        axes, (("trainer", "wall_s", "s (whole command)"), ("step", "step_ms", "ms per step"))
    ):
        turns = result[name]["turns"]
        for hp, color in ((True, "C0"), (False, "C1")):
            xs = [i for i, t in enumerate(turns) if t["hugepages"] == hp]
            ax.plot(xs, [turns[i][key] for i in xs], "o", color=color,
                    label="huge pages" if hp else "4 KiB pages")  # fmt: skip
        ax.set_xlabel("turn")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name}: {result[name]['summary'][key]['speedup']:.3f}x with huge pages")
        ax.legend()
    experiment.save_figure(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=4, help="trainer turns per arm")
    p.add_argument("--step-reps", type=int, default=2, help="bench turns per arm")
    p.add_argument("--steps", type=int, default=5, help="timed steps per bench turn")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    from vggjax import experiment, hostmem

    result = experiment.record(
        argv, thp_mode=hostmem._thp_mode(), reps=args.reps, step_reps=args.step_reps
    )
    result["command"] = "python benchmarks/hugepages_ab.py " + " ".join(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        turns = []
        for i in range(args.reps):
            for hp in (True, False) if i % 2 == 0 else (False, True):
                turns.append(trainer_turn(hp, tmp, i))
                print("trainer", turns[-1], file=sys.stderr)
        result["trainer"] = {
            "turns": turns,
            "summary": {k: summarize(turns, k) for k in ("wall_s", "loop_s", "minor_faults")},
        }
        steps = []
        for i in range(args.step_reps):
            for hp in (True, False) if i % 2 == 0 else (False, True):
                steps.append(step_turn(hp, tmp, i, args.steps))
                print("step", steps[-1], file=sys.stderr)
        result["step"] = {
            "turns": steps,
            "summary": {k: summarize(steps, k) for k in ("step_ms", "page_faults_per_step")},
        }
    os.makedirs(args.out, exist_ok=True)
    plot(result, os.path.join(args.out, "hugepages_ab.png"))
    experiment.write_result(result, args.out)  # result.json: renamed below
    os.replace(os.path.join(args.out, "result.json"), os.path.join(args.out, "hugepages_ab.json"))
    return result


if __name__ == "__main__":
    main()
