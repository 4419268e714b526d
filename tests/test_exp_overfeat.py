"""The OverFeat-1×1 experiment (reference case 003) in quick mode, and its pieces.

``main(["--quick", ...])`` runs in-process once (a module-scoped fixture) and the tests assert
the direction of the claim on its result: the net with one 1×1 head layer leaves the ln 3
plateau before the net with an extra one, and the plateau does not get shorter with depth.
Marked slow (end-to-end) but still run in CI.
"""

import math
import os

import numpy as np
import pytest
from repo import load_experiment

LN3 = math.log(3.0)


@pytest.fixture(scope="module")
def overfeat_script():
    return load_experiment("overfeat_1x1")


@pytest.fixture(scope="module")
def overfeat(overfeat_script, tmp_path_factory):
    out = tmp_path_factory.mktemp("overfeat_1x1")
    return overfeat_script.main(["--quick", "--out", str(out)]), out


def _runs(result, **match):
    return [r for r in result["runs"] if all(r[k] == v for k, v in match.items())]


@pytest.mark.slow
def test_overfeat_one_1x1_trains_below_two(overfeat):
    result, out = overfeat
    cfg = result["config"]
    assert cfg["steps"] >= 100 and set(cfg["extras"]) >= {0, 1}
    for dataset in cfg["datasets"]:
        for seed in cfg["seeds"]:
            (zero,) = _runs(result, dataset=dataset, seed=seed, extra_1x1=0, fix="")
            (one,) = _runs(result, dataset=dataset, seed=seed, extra_1x1=1, fix="")
            # both start on the plateau: the logits barely depend on the image
            assert abs(zero["loss_every_10"][0] - LN3) < 0.01
            assert abs(one["loss_every_10"][0] - LN3) < 0.01
            # within the same budget, the net with one 1×1 layer gets below the one with two
            assert zero["left_plateau_at"] is not None
            assert zero["final_loss"] < one["final_loss"] - 0.1
    assert (out / "result.json").exists()
    assert all((out / os.path.basename(f)).stat().st_size > 0 for f in result["plots"])


@pytest.mark.slow
def test_overfeat_plateau_length_non_decreasing_in_depth(overfeat):
    result, _ = overfeat
    for dataset in result["config"]["datasets"]:
        rows = sorted(
            (r for r in result["summary"] if r["dataset"] == dataset and r["fix"] == "none"),
            key=lambda r: r["extra_1x1"],
        )
        assert [r["extra_1x1"] for r in rows] == sorted(result["config"]["extras"])
        # "did not leave within the budget" counts as longer than any step that left
        medians = [math.inf if r["median"] is None else r["median"] for r in rows]
        assert medians == sorted(medians)
        assert medians[0] < math.inf


@pytest.mark.slow
def test_overfeat_last_hidden_layer_barely_depends_on_the_input(overfeat):
    result, _ = overfeat
    for r in _runs(result, fix=""):
        step0 = r["probes"][0]
        assert step0[0] == 0
        # std across images of the last hidden layer: bias 0.1 plus a tiny input-dependent part
        assert step0[1]["hidden"] < 1e-3
        assert step0[1]["logits"] < 1e-4


def test_overfeat_head_gain_is_independent_of_width(overfeat_script):
    """The head std scales by 1/√width, so std·√fan_in (each layer's gain) is the full net's."""
    full = overfeat_script.gains(overfeat_script.build(1, 0.5, "", 0))
    reduced = overfeat_script.gains(overfeat_script.build(1, 0.125, "", 0))
    assert set(full) == {"fc6", "fc7", "fc7_1", "fc9"}
    for name in ("fc6", "fc7", "fc7_1"):
        assert reduced[name] == pytest.approx(full[name], rel=0.05)
        assert 0.05 < full[name] < 0.3  # small: the input-dependent part shrinks per layer


def test_overfeat_he_fix_restores_the_gain(overfeat_script):
    he = overfeat_script.gains(overfeat_script.build(1, 0.125, "he", 0))
    for name in ("fc6", "fc7", "fc7_1"):
        assert he[name] == pytest.approx(math.sqrt(2.0), rel=0.05)


def test_overfeat_squares_put_the_class_in_the_square(overfeat_script):
    batch = next(overfeat_script.squares(0, batch=64))
    x, y = batch["image"], batch["label"]
    assert x.shape == (64, 60, 60, 3) and x.dtype == np.float32 and set(y) <= {0, 1, 2}
    for c, (r, col) in enumerate(overfeat_script.SQUARES):
        # the class's square region (±4 px jitter) is bright in every image of that class
        mean = x[y == c][:, r + 4 : r + 8, col + 4 : col + 8].mean()
        assert mean > 0.9


def test_overfeat_source_bugs(overfeat_script):
    bugs = overfeat_script.source_bugs(0.125)
    assert bugs["conv11_grad_norm_when_conv12_reads_input"] == 0.0
    assert bugs["eval_output_shape_when_pool_in_train_only"] != [8, 3]


def test_committed_result_backs_the_claim_table():
    """experiments/README.md's overfeat_1x1 row states what the committed result.json holds:
    per dataset the median steps to leave the plateau for 0 extra 1×1 layers (≥ 3 seeds), and
    how many of the 1- and 2-extra runs left within the budget."""
    import json

    from repo import ROOT

    with open(os.path.join(ROOT, "experiments", "results", "overfeat_1x1", "result.json")) as f:
        result = json.load(f)
    with open(os.path.join(ROOT, "experiments", "README.md")) as f:
        (row,) = [line for line in f if line.startswith("| One 1×1 head layer")]
    rows = {(r["dataset"], r["fix"], r["extra_1x1"]): r for r in result["summary"]}
    datasets, budget = result["config"]["datasets"], result["config"]["steps"]
    assert len(result["config"]["seeds"]) >= 3 and set(result["config"]["extras"]) >= {0, 1, 2}
    medians = [rows[d, "none", 0]["median"] for d in datasets]
    left0 = sum(rows[d, "none", 0]["left"] for d in datasets)
    runs0 = sum(rows[d, "none", 0]["seeds"] for d in datasets)
    deep = [rows[d, "none", e] for d in datasets for e in (1, 2)]
    he = [s for d in datasets for e in (1, 2) for s in rows[d, "he", e]["per_seed"]]
    bn = [s for d in datasets for e in (1, 2) for s in rows[d, "bn", e]["per_seed"]]
    growth2 = [rows[d, "none", 2]["logit_spread_growth_per_1000_steps"] for d in datasets]
    expected = [
        f"{budget:,} steps",
        f"0 extra layers {medians[0]:.0f} (digits) / {medians[1]:.0f} (squares), "
        f"{left0}/{runs0} runs leave",
        f"1 and 2 extra layers: {sum(r['left'] for r in deep)}/{sum(r['seeds'] for r in deep)} "
        f"runs leave within {budget:,} steps",
        f"×{min(growth2):.2f}–{max(growth2):.2f} per 1000 steps with 2 extra",
        f"He init leaves in {min(he)}–{max(he)} steps, BatchNorm in {min(bn)}–{max(bn)}",
    ]
    assert datasets == ["digits", "squares"] and None not in medians + he + bn
    for text in expected:
        assert text in row, text
