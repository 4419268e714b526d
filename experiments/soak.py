"""Soak test: does the trainer's resident memory stay flat over thousands of steps?

Claim: after warm-up (compilation, the first epochs of tf.data buffers, the first
checkpoints), ``python -m vggjax.train`` on the default config does not grow its resident
set size (RSS) by more than 5% — no leak in the step loop, the async checkpointer, the
metrics writer, the prefetcher or the input pipeline over a long run.

Method: start the real CLI in a subprocess (default config: VGG-11-BN on the embedded
digits, checkpoints every 100 steps keeping 3, evaluation every epoch = 22 steps, metrics
every 10 steps), sample its RSS with psutil every 0.5 s and pair each sample with the last
logged step. Warm-up = the first 10% of steps. Growth = median RSS over the last 10% of
the run vs the median over the 10% right after warm-up; the peak after warm-up is
reported too (both must stay within 5%). The default config at its own width (1/4);
``--width`` shrinks it for slower machines.

    python experiments/soak.py                 # 2000 steps, ~7 min on 2 CPU cores
    python experiments/soak.py --steps 300     # a quick look

Writes ``experiments/results/soak/result.json`` and ``soak_rss.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results", "soak")


def last_step(path: str) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [
                l
                for l in f.read().decode(errors="ignore").splitlines()
                if l.startswith("{") and l.endswith("}")
            ]
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument(
        "--width",
        type=float,
        default=0.25,
        help="model_options.width (the default config's is 0.25)",
    )
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="vggjax-soak-")
    cmd = [
        sys.executable,
        "-m",
        "vggjax.train",
        f"--workdir={workdir}",
        f"--config.num_train_steps={args.steps}",
        "--config.progress=False",
    ] + ([f"--config.model_options.width={args.width}"] if args.width != 0.25 else [])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int, float]] = []  # (seconds, step, RSS MiB)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            break
        samples.append((time.time() - t0, last_step(metrics_path), rss))
        time.sleep(args.interval)
    output = proc.communicate()[0]
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"the training run failed (rc {proc.returncode}):\n{output[-3000:]}")

    t, step, rss = (np.array(x) for x in zip(*samples))
    warm = int(0.1 * args.steps)
    after = step >= warm
    base_win = after & (step < 2 * warm)
    end_win = step >= args.steps - warm
    baseline, end = float(np.median(rss[base_win])), float(np.median(rss[end_win]))
    peak_after = float(rss[after].max())
    growth = 100 * (end - baseline) / baseline
    peak_growth = 100 * (peak_after - baseline) / baseline
    # Least-squares slope over the post-warm-up samples, in MiB per 1000 steps.
    slope = (
        float(np.polyfit(step[after], rss[after], 1)[0] * 1000) if after.sum() > 2 else float("nan")
    )
    done = [l for l in output.splitlines() if l.startswith("done:")]
    result = {
        "claim": "after warm-up, the trainer's RSS grows by no more than 5% over a long run",
        "command": " ".join(["python", "-m", "vggjax.train"] + cmd[3:]).replace(workdir, "WORKDIR"),
        "steps": args.steps,
        "width": args.width,
        "warmup_steps": warm,
        "samples": len(samples),
        "rss_mib_baseline_median_steps_%d_%d" % (warm, 2 * warm): round(baseline, 1),
        "rss_mib_end_median_last_%d_steps" % warm: round(end, 1),
        "rss_mib_peak_after_warmup": round(peak_after, 1),
        "rss_mib_max_overall": round(float(rss.max()), 1),
        "growth_percent": round(growth, 2),
        "peak_growth_percent": round(peak_growth, 2),
        "slope_mib_per_1000_steps": round(slope, 2),
        "passes_5_percent": bool(growth <= 5.0 and peak_growth <= 5.0),
        "steps_per_second": round(args.steps / float(t[-1] - t[step > 0][0]), 2)
        if (step > 0).any()
        else None,
        "wall_seconds": round(wall, 1),
        "trainer_summary": done[-1].replace(workdir, "WORKDIR") if done else "",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "series": {
            "seconds": [round(x, 1) for x in t],
            "step": step.tolist(),
            "rss_mib": [round(x, 1) for x in rss],
        },
    }
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(step, rss, lw=1, label="RSS")
    ax.axvspan(0, warm, color="0.9", label="warm-up")
    ax.axhline(baseline, color="k", ls=":", lw=1, label=f"baseline {baseline:.0f} MiB")
    ax.axhline(baseline * 1.05, color="r", ls="--", lw=1, label="+5%")
    ax.set(
        xlabel="training step",
        ylabel="resident memory (MiB)",
        title=f"vggjax.train, default config (width {args.width}), {args.steps} steps: RSS {growth:+.1f}% after warm-up",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "soak_rss.png"), dpi=110)
    print(json.dumps({k: v for k, v in result.items() if k != "series"}, indent=1))


if __name__ == "__main__":
    main()
