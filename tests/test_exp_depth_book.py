"""The ``--quick`` modes of experiments/depth_init.py and experiments/book_nets.py.

Each experiment is loaded from its file and its ``main`` run in-process (JAX already
imported by the suite), writing into a temporary folder.
"""

from __future__ import annotations

import json
import math

import pytest
from repo import load_experiment


@pytest.fixture(scope="module")
def depth_init(tmp_path_factory):
    out = tmp_path_factory.mktemp("depth_init")
    result = load_experiment("depth_init").main(["--quick", "--out", str(out)])
    return result, out


@pytest.fixture(scope="module")
def book_nets(tmp_path_factory):
    out = tmp_path_factory.mktemp("book_nets")
    result = load_experiment("book_nets").main(["--quick", "--out", str(out)])
    return result, out


def test_depth_init_normal001_gradients_vanish_against_he(depth_init):
    result, out = depth_init
    grads = result["gradient_measurement"]
    assert grads["width"] == 1.0  # full-width VGG-16: fan-ins as in the paper
    g = grads["results"]["vgg16"]
    small, he = g["normal(0.01)"]["grad_norm"], g["he_normal"]["grad_norm"]
    assert len(small) == len(he) == 16  # 13 convs + fc6, fc7, fc8
    assert all(math.isfinite(v) and v > 0 for v in small + he)
    # The first conv's gradient under N(0, 0.01) is >= 100x smaller than under He ...
    assert he[0] / small[0] >= 100
    assert result["checks"]["vgg16_first_layer_grad_ratio_he_over_normal001"] == pytest.approx(
        he[0] / small[0]
    )
    # ... and so is every other layer's: the whole net is starved, not just the bottom.
    assert all(h / s >= 100 for h, s in zip(he, small))
    # N(0, 0.01) logits are ~0: the loss sits at ln 10.
    assert g["normal(0.01)"]["loss"] == pytest.approx(math.log(10), abs=1e-3)


def test_depth_init_writes_json_and_plots(depth_init):
    result, out = depth_init
    on_disk = json.load(open(out / "result.json"))
    assert on_disk["experiment"] == "depth_init"
    assert "vggjax_digits" in on_disk["data"]["dataset"]
    assert on_disk["versions"]["jax"]
    for name in on_disk["plots"]:
        assert (out / name).stat().st_size > 1000


def test_book_nets_l2_penalty_equals_weight_decay(book_nets):
    result, out = book_nets
    runs = {
        (r["momentum"], r["weight_decay_mode"]): r for r in result["l2_vs_weight_decay"]["runs"]
    }
    assert result["l2_vs_weight_decay"]["lambda"] == 0.001
    assert result["l2_vs_weight_decay"]["weight_decay"] == 0.002
    # lambda * sum(w^2) in the loss == coupled weight_decay = 2 lambda, with and without momentum.
    assert runs[(0.0, "coupled")]["max_abs_param_diff"] <= 1e-6
    assert runs[(0.9, "coupled")]["max_abs_param_diff"] <= 1e-6
    # The check can see a difference: the parameters moved, and decoupled decay (outside
    # the momentum buffer) is not the same optimiser.
    assert runs[(0.0, "coupled")]["max_abs_param_change_from_init"] > 1e-3
    assert runs[(0.9, "decoupled")]["max_abs_param_diff"] > 1e-5


def test_book_nets_param_counts(book_nets):
    result, out = book_nets
    c = result["param_counts"]
    assert c["Net"] == 18090  # the book's count
    assert c["one_ResBlock"] == 32 * 32 * 9 + 2 * 32  # conv without bias + BN weight/bias
    for n in (10, 50, 100):
        # nn.Sequential(*(n * [ResBlock(...)])) repeats ONE module: one block's parameters.
        assert c[f"NetResDeep{n}_shared"] - c["NetResDeep_no_blocks"] == c["one_ResBlock"]
        assert c[f"NetResDeep{n}"] - c["NetResDeep_no_blocks"] == n * c["one_ResBlock"]
    assert all(
        v is True
        for k, v in result["checks"].items()
        if k.endswith(("18090", "one_block", "n_blocks"))
    )


def test_book_nets_trains_and_writes(book_nets):
    result, out = book_nets
    net = result["runs"]["Net"][0]
    assert net["finite"] and net["params"] == 18090
    assert len(net["grad_norms_at_step"]["1"]["grad_norm"]) == 4  # conv1, conv2, fc1, fc2
    on_disk = json.load(open(out / "result.json"))
    assert "vggjax_digits2" in on_disk["data"]
    for name in on_disk["plots"]:
        assert (out / name).stat().st_size > 1000


# --------------------------------------------------------------------------- shared pieces


def test_shuffled_batches_draw_one_permutation_per_epoch_and_drop_the_rest():
    import numpy as np

    from vggjax import experiment

    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10, dtype=np.int32)
    stream = experiment.shuffled_batches(x, y, 4, np.random.RandomState(3))
    got = [next(stream)["label"] for _ in range(4)]  # 2 full batches per epoch, 2 left over
    rng = np.random.RandomState(3)
    want = [p[i : i + 4] for p in (rng.permutation(10), rng.permutation(10)) for i in (0, 4)]
    assert all((g == w).all() for g, w in zip(got, want))
    assert experiment.moving_average([1, 2, 3, 4], 2).tolist() == [1.5, 2.5, 3.5]


def test_train_stops_after_the_fetch_where_stop_holds_and_keeps_every_step():
    import jax.numpy as jnp

    from vggjax import experiment

    def step(state, batch):
        new = state + batch
        return new, {"loss": jnp.where(new > 2.5, jnp.nan, new)}

    seen = []
    run = experiment.train(
        jnp.float32(0),
        step,
        iter([jnp.float32(1)] * 10),
        10,
        log_every=4,
        stop=lambda s, m: seen.append(s) or not math.isfinite(m["loss"]),
        probe=lambda s, state: float(state),
        probe_every=1,
        probe_at_start=True,
    )
    # step 3 is the first NaN; the loop stops after the fetch of steps 1-4, which it keeps.
    assert run.steps == [1, 2, 3, 4] and seen == [1, 2, 3] and run.stopped == "stop"
    assert run.at(2) == {"loss": 2.0} and math.isnan(run.lists()["loss"][2])
    assert [s for s, _ in run.probes] == [0, 1, 2, 3, 4] and float(run.state) == 4.0
    assert run.first_step_seconds is not None and run.first_step_seconds <= run.seconds
