"""The committed training records back what README.md states: the Fashion-MNIST run is of the
committed config, beats the published VGG-16 entry within the hour, and its costs file agrees
with its metrics; README's results table quotes these files.
"""

from __future__ import annotations

import json
import os

from repo import ROOT

RECORD = os.path.join(ROOT, "experiments", "results", "fashion_mnist")
PUBLISHED_VGG16 = 0.935  # zalandoresearch/fashion-mnist benchmark table: "VGG16 26M parameters"


def _read(name: str):
    with open(os.path.join(RECORD, name)) as f:
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def _summary() -> dict:
    return next(r for r in _read("metrics.jsonl") if r["kind"] == "summary")


def test_fashion_mnist_record_is_the_committed_config_and_beats_vgg16_within_the_hour():
    from vggjax.configs import fashion_mnist

    recorded = _read("config.json")
    expected = json.loads(fashion_mnist.get_config().to_json_best_effort())
    assert recorded == expected  # the record was made by the config as committed
    summary = _summary()
    assert summary["accuracy"] >= 0.940 > PUBLISHED_VGG16
    assert summary["examples"] == 10_000  # the whole test split
    assert summary["seconds"] <= 3600
    evals = [r for r in _read("metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["step"] == summary["steps"] == 50 * (60_000 // 128)


def test_fashion_mnist_costs_agree_with_the_run():
    costs, summary = _read("costs.json"), _summary()
    assert costs["test_accuracy"] == summary["accuracy"]
    assert costs["wall_seconds"] == summary["seconds"]
    assert costs["peak_rss_mib"] == summary["peak_rss_mib"]
    for part in ("eval", "checkpoint", "input"):
        assert costs["seconds"][part] == summary[f"{part}_seconds"]
        assert costs["fraction_of_run"][part] < 0.10  # item 4: no part over 10 % of the run
    assert costs["input_pipeline_images_per_s"] > costs["train_step_images_per_s"]


def test_readme_results_table_quotes_the_records():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    summary = _summary()
    row = next(line for line in readme.splitlines() if line.startswith("| Fashion-MNIST"))
    assert f"{summary['accuracy']:.2%}".replace("%", " %") in row
    assert f"{summary['seconds'] / 60:.0f} min" in row
    assert "--config=vggjax/configs/fashion_mnist.py" in readme
