"""Why the default config at batch size 3 sits at ln 10: the learning rate, not BatchNorm.

Issue #27's case: ``python -m vggjax.train --config.batch_size=3 --config.num_train_steps=600``
ends at chance. This script trains the default config (VGG-11-BN, width 1/4, the embedded digits,
SGD Nesterov with a 1-epoch warm-up and cosine decay) with the trainer itself over a grid of
batch sizes and peak learning rates, every run on the same number of images, and records per run
the test accuracy, the trainer's own trainability findings (``metrics.jsonl``), and what
``python -m vggjax.diagnose --workdir`` measures in the trained network: the fraction of dead
units of every ReLU layer.

* VGG-11-BN at batch 1, 2, 3, 6, 12: the config's learning rate (0.05) and the same rate
  scaled with the batch (0.05 x B / 64, the config's batch being 64); at batch 3 also 0.02, 0.01
  and 0.005.
* VGG-11 (no BatchNorm) at batch 1 and 3, both rates: is BatchNorm over few values to blame?

    python experiments/batch_lr.py            # 19 runs of 3,600 images, ~15 min on 2 CPU cores
    python experiments/batch_lr.py --quick    # batch 3 at 0.05 and 0.005, 1,800 images

Writes ``experiments/results/batch_lr/result.json`` and ``batch_lr.png``.
"""

from __future__ import annotations

import os
import sys
import tempfile

from vggjax import experiment

CONFIG_BATCH, CONFIG_LR = 64, 0.05  # vggjax/configs/default.py


def grid(quick: bool) -> list[dict]:
    """The runs: ``model``, ``batch``, ``lr``."""
    if quick:
        return [dict(model="vgg11_bn", batch=3, lr=lr) for lr in (CONFIG_LR, 0.005)]
    runs = []
    for batch in (1, 2, 3, 6, 12):
        for lr in (CONFIG_LR, round(CONFIG_LR * batch / CONFIG_BATCH, 6)):
            runs.append(dict(model="vgg11_bn", batch=batch, lr=lr))
    runs += [dict(model="vgg11_bn", batch=3, lr=lr) for lr in (0.02, 0.01, 0.005)]
    for batch in (1, 3):
        for lr in (CONFIG_LR, round(CONFIG_LR * batch / CONFIG_BATCH, 6)):
            runs.append(dict(model="vgg11", batch=batch, lr=lr))
    return runs


def config_for(run: dict, images: int):
    """The default config with the run's model, batch size and peak learning rate, trained for
    ``images`` images."""
    from vggjax.configs import default

    config = default.get_config()
    config.model = run["model"]
    config.batch_size = run["batch"]
    config.optim.learning_rate = run["lr"]
    config.num_train_steps = images // run["batch"]
    config.checkpoint_every_steps = config.num_train_steps  # the trained network, for diagnose
    config.progress = False
    config.num_devices = 1  # a batch of 1 or 3 does not split over devices
    config.compilation_cache = ""
    return config


def train_one(run: dict, images: int, workdir: str) -> dict:
    """Train one run with the trainer and measure it; the run's record."""
    from vggjax import diagnose, metrics, training

    config = config_for(run, images)
    summary = training.train_and_evaluate(config, workdir)
    records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train = [r for r in records if r["kind"] == "train"]
    found = [r for r in records if r["kind"] == "finding"]
    trained = diagnose.diagnose(config, 32, workdir)
    return {
        **run,
        "steps": config.num_train_steps,
        "test_accuracy": summary["accuracy"],
        "final_train_loss": sum(r["loss"] for r in train[-10:]) / len(train[-10:]),
        "findings": [
            {"step": r["step"], "finding": r["finding"], "layer": r["layer"]} for r in found
        ],
        "dead_at_end": {r.name: r.dead for r in trained.layers if r.dead is not None},
        "diagnose": [f.kind for f in trained.findings],
    }


def plot(result: dict, path: str) -> str:
    plt = experiment.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    runs = result["runs"]
    for model, marker in (("vgg11_bn", "o"), ("vgg11", "s")):
        for batch in sorted({r["batch"] for r in runs if r["model"] == model}):
            rows = sorted(
                (r for r in runs if r["model"] == model and r["batch"] == batch),
                key=lambda r: r["lr"],
            )
            ax.plot(
                [r["lr"] for r in rows],
                [r["test_accuracy"] for r in rows],
                marker=marker,
                linestyle="-" if model == "vgg11_bn" else ":",
                label=f"{model}, batch {batch}",
            )
            for r in rows:
                if "dead_layer" in r["diagnose"]:
                    ax.plot(r["lr"], r["test_accuracy"], "x", color="black", markersize=9)
    ax.axhline(0.1, color="grey", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        f"default config, {result['config']['images']:,} images per run (x: a ReLU layer all dead)"
    )
    ax.legend(ncol=2)
    return experiment.save_figure(fig, path)


def main(argv=None) -> dict:
    p = experiment.parser(
        __doc__, experiment.results_dir(__file__), quick="two runs at batch 3 (the tests' budget)"
    )
    args = p.parse_args(argv)
    images = 1800 if args.quick else 3600
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(grid(args.quick)):
            workdir = os.path.join(tmp, f"run{i}")
            runs.append(train_one(run, images, workdir))
            r = runs[-1]
            print(
                f"{r['model']} batch {r['batch']} lr {r['lr']:g}: test accuracy "
                f"{r['test_accuracy']:.4f}, findings {[f['finding'] for f in r['findings']]}",
                file=sys.stderr,
            )
    result = experiment.record(
        argv, config={"images": images, "config_batch": CONFIG_BATCH, "config_lr": CONFIG_LR}
    )
    result["runs"] = runs
    os.makedirs(args.out, exist_ok=True)
    result["plots"] = [plot(result, os.path.join(args.out, "batch_lr.png"))]
    experiment.write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
