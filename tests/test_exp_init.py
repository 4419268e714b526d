"""The init-study experiment (seed 004) in quick mode, and accumulate_gradients.

The experiment tests run each script's ``main(["--quick", ...])`` in-process (module-scoped
fixtures, one run per script); they are marked slow (end-to-end) but still run in CI.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from repo import load_experiment

from vggjax import optim

LN3 = math.log(3.0)


# --------------------------------------------------------------------------- accumulate_gradients


def test_accumulate_gradients_passes_the_running_sum():
    params = {"w": jnp.zeros(3)}
    tx = optax.chain(
        optim.accumulate_gradients(), optim.make_optimizer({"learning_rate": 1.0}, 1, 1)
    )
    state = tx.init(params)
    grads = [jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, -1.0, 0.0]), jnp.array([-2.0, 0.0, 1.0])]
    total = jnp.zeros(3)
    for g in grads:
        total = total + g
        updates, state = tx.update({"w": g}, state, params)
        np.testing.assert_allclose(
            updates["w"], -total
        )  # lr 1, no momentum: the step is -(g1+...+gt)
    assert float(optim.current_lr(state)) == 1.0  # the lr state is still found inside the chain


@pytest.mark.slow
def test_accumulate_gradients_matches_torch_without_zero_grad():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, xs = rng.normal(size=(4,)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)

    def loss(w, x):
        return jnp.sum(jnp.tanh(w * x) ** 2)

    tx = optax.chain(
        optim.accumulate_gradients(),
        optim.make_optimizer({"learning_rate": 0.1, "momentum": 0.5}, 1, 1),
    )
    w, state = jnp.asarray(w0), None
    state = tx.init(w)
    for x in xs:
        updates, state = tx.update(jax.grad(loss)(w, jnp.asarray(x)), state, w)
        w = optax.apply_updates(w, updates)

    tw = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.SGD([tw], lr=0.1, momentum=0.5)
    for x in xs:  # no opt.zero_grad(): .grad accumulates
        torch.sum(torch.tanh(tw * torch.from_numpy(x)) ** 2).backward()
        opt.step()
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- init study (seed 004)


@pytest.fixture(scope="module")
def init_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("init_study")
    result = load_experiment("init_study").main(["--quick", "--torch-check", "--out", str(out)])
    return result, out


@pytest.mark.slow
def test_init_study_zero_init_is_exactly_stuck(init_study):
    result, _ = init_study
    for variant in ("faithful", "corrected"):
        run = result["runs"][f"zeros/{variant}"]
        assert len(run["loss"]) == 10
        assert max(abs(v - LN3) for v in run["loss"]) < 1e-6
        assert all(
            v == 0.0 for v in run["conv1_max_abs"] + run["conv2_max_abs"]
        )  # exactly, every iteration
        assert all(v == 0.0 for v in run["grad_norm"])
    grads = result["mechanism"]["two_conv_zero_init_step0_grad_norms"]
    assert grads and all(v == 0.0 for v in grads.values())
    assert result["mechanism"]["last_relu"]["grad_through_relu_at_0_max_abs"] == 0.0


@pytest.mark.slow
def test_init_study_single_zero_conv_moves(init_study):
    result, _ = init_study
    for variant in ("faithful", "corrected"):
        run = result["runs"][f"zeros_only_conv2/{variant}"]
        assert run["conv2_max_abs"][0] == 0.0 and run["conv2_max_abs"][-1] > 0.0
        assert run["loss"][-1] < run["loss"][0]
    single = result["mechanism"]["single_conv"]
    assert single["conv2_grad_norm_measured"] > 0
    assert single["formula_max_rel_error"] < 1e-3  # the seed's dL/dk = sum(input * dL/df)


@pytest.mark.slow
def test_init_study_accumulation_and_torch_parity(init_study):
    result, out = init_study
    for name in ("constant5", "kaiming"):
        acc = result["accumulation"][name]
        assert (
            acc["final_loss_faithful"]
            < acc["final_loss_corrected"]
            < result["runs"][f"{name}/corrected"]["loss"][0]
        )
        assert acc["applied_over_current_grad_norm_faithful"]["last"] > 2.0
    assert result["torch_check"]["all_allclose"]
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["zeros_check"]["max_abs_conv_weight"] == 0.0
    for f in result["plots"]:
        assert (out / f).stat().st_size > 0
