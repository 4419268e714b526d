"""Fashion-MNIST at real scale: what the record run of ``vggjax/configs/fashion_mnist.py`` cost.

The run itself is the trainer's own command (its output is ``output.txt`` in the record)::

    python -m vggjax.train --config=vggjax/configs/fashion_mnist.py --workdir=runs/fashion_mnist \
        2>&1 | tee experiments/results/fashion_mnist/output.txt
    python experiments/fashion_mnist.py --workdir=runs/fashion_mnist

This script copies the run's record (``config.json``, ``metrics.jsonl``, ``curves.png``) into
``experiments/results/fashion_mnist/`` and writes ``costs.json`` beside it: the input pipeline
alone (images/s of the same training stream, pulled without training, measured now) against
the train step's images/s during the run (median of its logged intervals without an
evaluation or checkpoint in them), the time per epoch, the time spent in evaluation, in
checkpointing and waiting for input (from the run's summary), and the run's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from vggjax import metrics
from vggjax.bench.profile import pipeline_bench

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "fashion_mnist")
RECORD_FILES = ("config.json", "metrics.jsonl", "curves.png")


def costs(workdir: str, pipeline_seconds: float) -> dict:
    """The run's cost breakdown (see the module docstring) from ``workdir``'s ``metrics.jsonl``."""
    import json

    records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    summary = next(r for r in records if r["kind"] == "summary")
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    # A logged interval's rate includes any evaluation or checkpoint inside it: leave those out.
    busy = {r["step"] for r in evals} | {
        s for s in range(0, summary["steps"] + 1, config["checkpoint_every_steps"] or 10**12)
    }
    every = config["log_every_steps"]
    clean = [
        r["images_per_sec"]
        for r in train[1:]
        if not any(r["step"] - every < b <= r["step"] for b in busy)
    ]
    from vggjax import data

    info = data.get_info(config["dataset"], config["data_dir"] or None)
    steps_per_epoch = info.num_train_examples // config["batch_size"]
    seconds = summary["seconds"]
    pipe = pipeline_bench(
        config["image_size"],
        config["batch_size"],
        pipeline_seconds,
        dataset=config["dataset"],
        channels=None,
        data_dir=config["data_dir"] or None,
    )
    step_rate = float(np.median(clean))
    parts = {k[: -len("_seconds")]: v for k, v in summary.items() if k.endswith("_seconds")}
    return {
        "command": "python experiments/fashion_mnist.py --workdir=" + workdir,
        "test_accuracy": summary["accuracy"],
        "wall_seconds": seconds,
        "epochs": summary["steps"] / steps_per_epoch,
        "seconds_per_epoch": seconds / (summary["steps"] / steps_per_epoch),
        "train_step_images_per_s": step_rate,
        "input_pipeline_images_per_s": pipe["images_per_s"],
        "pipeline_over_step": pipe["images_per_s"] / step_rate,
        "seconds": parts,
        "fraction_of_run": {k: v / seconds for k, v in parts.items()},
        "eval_passes": len(evals),
        "seconds_per_eval": float(np.mean([r["seconds"] for r in evals])) if evals else None,
        "peak_rss_mib": summary["peak_rss_mib"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/fashion_mnist", help="the record run's workdir")
    p.add_argument("--pipeline-seconds", type=float, default=20.0)
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in RECORD_FILES:
        shutil.copy(os.path.join(args.workdir, name), os.path.join(args.out, name))
    result = costs(args.workdir, args.pipeline_seconds)
    metrics.dump_json(result, os.path.join(args.out, "costs.json"))
    f = result["fraction_of_run"]
    print(
        f"test accuracy {result['test_accuracy']:.4f} in {result['wall_seconds']:.0f} s "
        f"({result['epochs']:.0f} epochs, {result['seconds_per_epoch']:.0f} s each); train step "
        f"{result['train_step_images_per_s']:.0f} img/s, input pipeline alone "
        f"{result['input_pipeline_images_per_s']:.0f} img/s; evaluation "
        f"{f.get('eval', 0):.1%}, checkpoints {f.get('checkpoint', 0):.1%}, waiting for input "
        f"{f.get('input', 0):.1%} of the run; peak RSS {result['peak_rss_mib']} MiB"
    )


if __name__ == "__main__":
    main()
