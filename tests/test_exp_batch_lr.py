"""The batch-size / learning-rate experiment (issue #27's batch-3 plateau) and its table.

``main(["--quick", ...])`` trains the default config at batch 3 with the config's learning rate
(0.05) and with a tenth of it: the first ends at chance with fc6's ReLUs all dead, found by the
trainer at its plateau and by ``diagnose --workdir``; the second learns, with no dead layer. The
committed ``result.json`` is the source of the table in docs/trainability.md
(``python tests/test_exp_batch_lr.py --write-docs`` rewrites it).
"""

from __future__ import annotations

import json
import os

import pytest
from repo import ROOT, GeneratedTable, load_experiment

RESULT = os.path.join(ROOT, "experiments", "results", "batch_lr", "result.json")


@pytest.mark.slow
def test_batch_3_dies_at_the_configs_rate_and_learns_at_a_tenth(tmp_path):
    result = load_experiment("batch_lr").main(["--quick", "--out", str(tmp_path)])
    high, low = sorted(result["runs"], key=lambda r: -r["lr"])
    assert (high["batch"], high["lr"], low["lr"]) == (3, 0.05, 0.005)
    assert high["test_accuracy"] < 0.15 and low["test_accuracy"] > 0.5
    # the trainer said why while training, and diagnose --workdir says so of the checkpoint
    assert [f["finding"] for f in high["findings"]][-1] == "dead_layer"
    assert high["findings"][-1]["layer"] == "relu6" and high["diagnose"] == ["dead_layer"]
    assert high["dead_at_end"]["relu6"] == 1.0
    assert "dead_layer" not in [f["finding"] for f in low["findings"]] and low["diagnose"] == []
    assert low["dead_at_end"]["relu6"] < 1.0
    assert (tmp_path / "result.json").exists() and (tmp_path / "batch_lr.png").stat().st_size


def _rows() -> list[dict]:
    with open(RESULT) as f:
        return json.load(f)["runs"]


def render_table() -> str:
    out = [
        "| model | batch | peak lr | test accuracy | what the trainer said | relu6 dead at end |",
        "|---|---|---|---|---|---|",
    ]
    for r in _rows():
        said = ", ".join(dict.fromkeys(f["finding"] for f in r["findings"])) or "nothing"
        out.append(
            f"| {r['model']} | {r['batch']} | {r['lr']:g} | {r['test_accuracy']:.3f} | {said} | "
            f"{r['dead_at_end']['relu6']:.0%} |"
        )
    return "\n".join(out)


TABLE = GeneratedTable("trainability.md", "batch_lr", "tests/test_exp_batch_lr.py", render_table)


def test_docs_table_matches_the_committed_result():
    TABLE.check()


def test_committed_result_backs_the_claims():
    """What docs/trainability.md and the check's rules say, on the committed runs: at batch 3 the
    config's rate kills fc6 and a tenth of it learns; without BatchNorm the config's rate dies
    too; BatchNorm over 4 values per channel (batch 1) learns less than the same net without."""
    rows = {(r["model"], r["batch"], r["lr"]): r for r in _rows()}
    base, tenth = rows["vgg11_bn", 3, 0.05], rows["vgg11_bn", 3, 0.005]
    assert base["test_accuracy"] < 0.15 and base["diagnose"] == ["dead_layer"]
    assert tenth["test_accuracy"] > 0.6 and "dead_layer" not in tenth["diagnose"]
    assert rows["vgg11", 3, 0.05]["test_accuracy"] < 0.15
    bn1 = rows["vgg11_bn", 1, round(0.05 / 64, 6)]
    assert "bn_few_values" in [f["finding"] for f in bn1["findings"]]
    assert bn1["test_accuracy"] < rows["vgg11", 1, round(0.05 / 64, 6)]["test_accuracy"]
    for (model, batch, lr), r in rows.items():  # every run at chance had its cause named
        if r["test_accuracy"] < 0.15:
            assert {"dead_layer", "bn_few_values"} & {f["finding"] for f in r["findings"]}, r


if __name__ == "__main__":
    TABLE.main()
