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

    python experiments/soak.py                 # 2000 steps, ~13 min on 2 shared CPU cores
    python experiments/soak.py --quick         # 300 steps, a quick look

Writes ``experiments/results/soak/result.json`` and ``soak_rss.png``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

from vggjax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = experiment.parser(
        __doc__, experiment.results_dir(__file__), quick="300 steps instead of 2000 (a quick look)"
    )
    p.add_argument("--steps", type=int, help="training steps (default 2000, 300 with --quick)")
    p.add_argument("--width", type=float, default=0.25, help="model_options.width (config: 0.25)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    return p.parse_args(argv)


def last_step(path: str) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [
                line
                for line in f.read().decode(errors="ignore").splitlines()
                if line.startswith("{") and line.endswith("}")
            ]
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def run_trainer(cmd: list[str], workdir: str, interval: float):
    """Run ``cmd``, sampling its RSS every ``interval`` s: ``(samples, output, wall seconds)``."""
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
        time.sleep(interval)
    output = proc.communicate()[0]
    if proc.returncode != 0:
        sys.exit(f"the training run failed (rc {proc.returncode}):\n{output[-3000:]}")
    return samples, output, time.time() - t0


def memory_summary(samples: list, steps: int) -> dict:
    """Baseline, end, peak and slope of the RSS after the warm-up (the first 10% of steps)."""
    t, step, rss = (np.array(x) for x in zip(*samples))
    warm = int(0.1 * steps)
    after = step >= warm
    baseline = float(np.median(rss[after & (step < 2 * warm)]))
    end = float(np.median(rss[step >= steps - warm]))
    peak_after = float(rss[after].max())
    growth = 100 * (end - baseline) / baseline
    peak_growth = 100 * (peak_after - baseline) / baseline
    # Least-squares slope over the post-warm-up samples, in MiB per 1000 steps.
    slope = float(np.polyfit(step[after], rss[after], 1)[0] * 1000) if after.sum() > 2 else np.nan
    rate = round(steps / float(t[-1] - t[step > 0][0]), 2) if (step > 0).any() else None
    return {
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
        "steps_per_second": rate,
        "series": {
            "seconds": [round(x, 1) for x in t],
            "step": step.tolist(),
            "rss_mib": [round(x, 1) for x in rss],
        },
    }


def plot(result: dict, path: str) -> None:
    plt = experiment.pyplot()
    s, warm, growth = result["series"], result["warmup_steps"], result["growth_percent"]
    baseline = result["rss_mib_baseline_median_steps_%d_%d" % (warm, 2 * warm)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(s["step"], s["rss_mib"], lw=1, label="RSS")
    ax.axvspan(0, warm, color="0.9", label="warm-up")
    ax.axhline(baseline, color="k", ls=":", lw=1, label=f"baseline {baseline:.0f} MiB")
    ax.axhline(baseline * 1.05, color="r", ls="--", lw=1, label="+5%")
    ax.set(
        xlabel="training step",
        ylabel="resident memory (MiB)",
        title=f"vggjax.train, default config (width {result['width']}), {result['steps']} steps: "
        f"RSS {growth:+.1f}% after warm-up",
    )
    ax.legend(loc="lower right", fontsize=8)
    experiment.save_figure(fig, path, dpi=110)


def main(argv=None) -> dict:
    args = parse_args(argv)
    steps = args.steps or (300 if args.quick else 2000)
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="vggjax-soak-")
    trainer = ["-m", "vggjax.train", f"--workdir={workdir}", f"--config.num_train_steps={steps}"]
    trainer += ["--config.progress=False"]
    if args.width != 0.25:
        trainer.append(f"--config.model_options.width={args.width}")
    samples, output, wall = run_trainer([sys.executable, *trainer], workdir, args.interval)
    done = [line for line in output.splitlines() if line.startswith("done:")]
    memory = memory_summary(samples, steps)
    series = memory.pop("series")
    result = experiment.record(
        argv,
        claim="after warm-up, the trainer's RSS grows by no more than 5% over a long run",
        trainer_command=" ".join(["python", *trainer]).replace(workdir, "WORKDIR"),
        steps=steps,
        width=args.width,
        **memory,
        wall_seconds=round(wall, 1),
        trainer_summary=done[-1].replace(workdir, "WORKDIR") if done else "",
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}",
        series=series,
    )
    plot(result, os.path.join(args.out, "soak_rss.png"))
    result["plots"] = ["soak_rss.png"]
    experiment.write_result(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "series"}, indent=1))
    return result


if __name__ == "__main__":
    main()
