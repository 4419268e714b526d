"""The --quick modes of experiments/gap_dead_relu.py and experiments/dense_eval.py.

Each runs the experiment's own ``main`` in-process (tens of seconds on a CPU) and checks
the claims it reproduces: the seed's GAP head with ReLU'd scores dies (loss ln 2 to 1e-4,
every score unit dead, gradient exactly 0) while linear scores train; the FC-as-conv head
is dense evaluation of the FC head (cells == FC head on pool5 windows, output == map
mean) and at 1×1 the final average pooling is the identity, bit for bit.
"""

from __future__ import annotations

import json
import math

import pytest
from repo import load_experiment


@pytest.mark.slow
def test_gap_dead_relu_quick(tmp_path):
    res = load_experiment("gap_dead_relu").main(["--quick", "--out", str(tmp_path)])
    relu = res["variant_runs"]["relu_scores"]
    hist = relu["history"]
    assert abs(relu["final_loss"] - math.log(2)) < 1e-4
    assert hist["dead_frac/score_relu"][-1] == 1.0  # 100 % of the score units dead
    assert hist["zero_frac/score_relu"][-1] == 1.0  # every score-map entry exactly 0
    assert relu["final_grad_norm"] == 0.0  # no gradient reaches any layer
    assert relu["updates_to_collapse"] is not None  # and it stays that way
    assert all(g == 0.0 for g in hist["grad_norm"][relu["updates_to_collapse"] :])

    linear = res["variant_runs"]["linear_scores"]
    assert linear["mean_loss_last_10"] < math.log(2) - 0.01
    assert linear["mean_loss_last_10"] < linear["history"]["loss"][0] - 0.01
    assert all(res["checks"].values()), res["checks"]

    saved = json.loads((tmp_path / "result.json").read_text())
    assert (
        saved["variant_runs"]["relu_scores"]["updates_to_collapse"] == relu["updates_to_collapse"]
    )
    assert (tmp_path / "gap_dead_relu.png").stat().st_size > 0


@pytest.mark.slow
def test_dense_eval_quick(tmp_path):
    res = load_experiment("dense_eval").main(["--quick", "--out", str(tmp_path)])
    for image in res["per_image"]:
        assert image["pool5_shape"][:2] == [12, 12]
        assert image["score_map_shape"][:2] == [6, 6]
        # Every cell is the fc head on the matching 7×7 pool5 window; the output is the map mean.
        assert image["cell_vs_window_rel_max"] < 1e-4
        assert image["output_vs_map_mean_rel_max"] < 1e-4
        assert image["output_vs_window_mean_rel_max"] < 1e-4
        # Crops are a different computation (zero padding at the crop border): measured, not equal.
        assert 0.0 < image["cell_vs_crop_rel_l2_min"] <= image["cell_vs_crop_rel_l2_max"]

    seed_net = res["seed_net_12x12"]
    assert seed_net["score_map_shape"][1:3] == [1, 1]
    assert seed_net["output_equals_map_cell_bitwise"]
    assert seed_net["explicit_mean_equals_map_cell_bitwise"]
    assert seed_net["max_abs_diff_output_vs_map"] == 0.0
    assert seed_net["conv12_vs_fc_on_flattened_map_rel_max"] < 1e-4

    table = res["parameter_table"]
    assert table["params"] == {
        "total": 333_502_275,
        "trainable": 318_787_587,
        "non_trainable": 14_714_688,
    }
    assert table["fc6_params"] == 301_993_984
    assert all(v for v in res["checks"].values() if v is not None), res["checks"]
    assert (tmp_path / "dense_eval.png").stat().st_size > 0
    assert "Total params: 333,502,275" in (tmp_path / "summary_vgg16_fc_conv_400.txt").read_text()
