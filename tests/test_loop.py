"""The reusable loop (vggjax.training.fit) and its hooks, on a toy step and on the real train
step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vggjax.errors import VggjaxError
from vggjax.training import Hook, fit, hooks, make_train_step, state_from_model


def toy_step(state, batch):
    """Adds the batch to a counter; 'finite' is 0 where the batch is NaN (as the train step
    reports)."""
    new = state + batch
    return new, {
        "loss": new,
        "finite": jnp.isfinite(new).astype(jnp.float32),
        "lr": jnp.float32(0.1),
    }


def batches(values):
    return iter([jnp.float32(v) for v in values])


def test_fit_runs_every_step_and_history_sees_each_one():
    history = hooks.History()
    result = fit(
        jnp.float32(0), jax.jit(toy_step), batches(range(1, 6)), total_steps=5, hooks=[history]
    )
    assert float(result.state) == 15.0 and result.step == 5 and result.stopped == ""
    assert history.steps == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(history.series("loss"), [1, 3, 6, 10, 15])


def test_log_every_fetches_in_blocks_and_at_the_last_step():
    seen = []

    class Spy(Hook):
        def on_records(self, loop, records, diagnostics):
            seen.append([r.step for r in records])

    fit(jnp.float32(0), toy_step, batches([1] * 7), total_steps=7, log_every=3, hooks=[Spy()])
    assert seen == [[1, 2, 3], [4, 5, 6], [7]]


def test_resuming_from_a_step_continues_the_same_run():
    full = fit(jnp.float32(0), toy_step, batches(range(10)), total_steps=10).state
    half = fit(jnp.float32(0), toy_step, batches(range(5)), total_steps=5).state
    rest = fit(half, toy_step, batches(range(5, 10)), total_steps=10, start_step=5)
    assert float(rest.state) == float(full) and rest.step == 10


def test_nan_policy_stop_names_the_step_skip_warns_none_ignores(capsys):
    with pytest.raises(
        VggjaxError, match=r"non-finite loss, gradient or weights at step 3: loss nan"
    ):
        fit(jnp.float32(0), toy_step, batches([1, 1, np.nan, 1]), total_steps=4)
    result = fit(
        jnp.float32(0), toy_step, batches([1, np.nan, 1]), total_steps=3, nan_policy="skip"
    )
    assert result.skipped == [
        2,
        3,
    ]  # the toy step keeps the NaN; the train step would drop the update
    assert "warning: skipped step 2" in capsys.readouterr().err
    assert (
        fit(jnp.float32(0), toy_step, batches([np.nan]), total_steps=1, nan_policy=None).skipped
        == []
    )


def test_a_hook_stops_the_loop_after_the_step_and_every_probes():
    class StopAt(Hook):
        def wants_stop(self, loop, step):
            loop.stop_reason = "asked"
            return step == 3

    probes = hooks.Every(2, lambda step, state: float(state), at_start=jnp.float32(0))
    closed = []

    class Close(Hook):
        def close(self):
            closed.append(True)

    result = fit(
        jnp.float32(0),
        toy_step,
        batches([1] * 10),
        total_steps=10,
        hooks=[StopAt(), probes, Close()],
    )
    assert result.step == 3 and result.stopped == "asked" and float(result.state) == 3.0
    assert probes.results == [(0, 0.0), (2, 2.0)] and closed == [True]
    with pytest.raises(VggjaxError):  # close runs when the loop raises, too
        fit(jnp.float32(0), toy_step, batches([np.nan]), total_steps=1, hooks=[Close()])
    assert closed == [True, True]


def test_after_step_may_replace_the_state():
    class Reset(Hook):
        def after_step(self, loop, step, state):
            return jnp.float32(0) if step == 2 else None

    assert (
        float(
            fit(jnp.float32(0), toy_step, batches([1, 1, 1]), total_steps=3, hooks=[Reset()]).state
        )
        == 1.0
    )


def test_fit_trains_a_real_model_with_the_library_step():
    import vggjax

    model = vggjax.vgg11_bn(
        num_classes=3,
        width=0.0625,
        head_options={"hidden": 8},
        dropout=0.0,
        init="he_normal",
        rngs=nnx.Rngs(0),
    )
    from vggjax import optim

    cfg = optim.default_config()
    cfg.learning_rate, cfg.schedule, cfg.warmup_epochs = 0.05, "constant", 0.0
    tx = optim.make_optimizer(cfg, steps_per_epoch=10, total_steps=20)
    graphdef, _, state = state_from_model(model, tx)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 32, 32, 3)), jnp.float32)
    batch = {
        "image": x,
        "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32),
        "mask": jnp.ones(8, bool),
    }
    history = hooks.History(["loss", "grad_norm"])
    step = jax.jit(make_train_step(graphdef, tx, "softmax_cross_entropy"))
    result = fit(state, step, iter([batch] * 20), total_steps=20, hooks=[history])
    loss = history.series("loss")
    assert len(loss) == 20 and loss[-1] < 0.5 * loss[0]  # memorises one batch
    assert int(result.state.step) == 20 and set(history.rows[0]) == {"loss", "grad_norm"}
