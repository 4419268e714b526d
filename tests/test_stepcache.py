"""The export cache of jitted steps (vggjax.stepcache): same values as plain jit, bit for bit,
on 1 and 8 devices; a key that changes with everything that decides the trace; damaged files
and unexportable steps fall back instead of failing."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from train_helpers import NUM_CLASSES, run_steps, synthetic_batches, tiny_config

from vggjax import initializers, optim, stepcache, train, training


def small_step():
    """``(train_step, make_state)`` of the trainer for the book's NetBatchNorm (3 channels, 10
    classes): the real step (BatchNorm statistics, SGD momentum) at a quarter of the tiny
    VGG's compile time, as this test compiles it four times. The 8-device test below runs
    the tiny VGG."""
    config = tiny_config(
        num_devices=1, model="net_batchnorm", model_options=ml_collections.ConfigDict()
    )
    tx = optim.make_optimizer(config.optim, steps_per_epoch=10, total_steps=3)
    graphdef, _, make = train.init_state(config, NUM_CLASSES, 3, tx)
    return train.make_train_step(graphdef, tx, "softmax_cross_entropy"), jax.jit(make)


def batches(n=2):
    return [
        jax.device_put({**b, "image": np.repeat(b["image"], 3, axis=-1)})
        for b in synthetic_batches(n)
    ]


def run(step_fn, make, n=2):
    state, out = make(), []
    for b in batches(n):
        state, m = step_fn(state, b)
        out.append(jax.device_get(m))
    return jax.device_get(state), out


def assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_exported_then_cached_step_equals_plain_jit(tmp_path):
    step, make = small_step()
    plain = run(jax.jit(step, donate_argnums=0), make)
    first = stepcache.CachedStep(step, key="k", cache_dir=str(tmp_path), donate_state=True)
    assert_same(run(first, make), plain)
    assert first.source == "exported" and os.path.isfile(first.path)
    assert os.path.dirname(first.path) == str(tmp_path / stepcache.SUBDIR)
    again = stepcache.CachedStep(step, key="k", cache_dir=str(tmp_path), donate_state=True)
    assert_same(run(again, make), plain)
    assert again.source == "cache" and again.path == first.path
    # Ahead-of-time use (the bench): lower().compile() takes and returns the state tree.
    aot = stepcache.CachedStep(step, key="k", cache_dir=str(tmp_path), donate_state=True)
    state = make()
    compiled = aot.lower(state, batches(1)[0]).compile()
    assert aot.source == "cache" and compiled.cost_analysis() is not None
    assert_same(run(compiled, make), plain)


def test_metrics_only_step(tmp_path):
    def ev(state, batch):
        return toy_step(state, batch)[1]

    b = {"x": jnp.ones((16, 8))}
    for source in ("exported", "cache"):
        cached = stepcache.CachedStep(ev, key="e", cache_dir=str(tmp_path), returns_state=False)
        assert_same(cached(toy_make(), b), jax.jit(ev)(toy_make(), b))
        assert cached.source == source


def toy_step(state, batch):
    """A small train step with the leaf kinds of the real one: float weights, an int counter, a
    PRNG key."""
    key, sub = jax.random.split(state["key"])

    def loss_fn(w):
        keep = jax.random.bernoulli(sub, 0.5, batch["x"].shape)
        return jnp.mean(jnp.square(jnp.where(keep, batch["x"], 0.0) @ w - 1.0))

    loss, g = jax.value_and_grad(loss_fn)(state["w"])
    return {"w": state["w"] - 0.1 * g, "n": state["n"] + 1, "key": key}, {"loss": loss}


def toy_make():
    return {"w": jnp.ones((8, 4)), "n": jnp.zeros((), jnp.int32), "key": jax.random.key(0)}


def toy_run(step_fn, n=3):
    state, out = toy_make(), []
    for i in range(n):
        state, m = step_fn(state, {"x": jnp.full((16, 8), 0.1 * (i + 1))})
        out.append(jax.device_get(m))
    return jax.device_get(state), out


TOY_PLAIN = None


def toy_plain():
    global TOY_PLAIN
    if TOY_PLAIN is None:
        TOY_PLAIN = toy_run(jax.jit(toy_step))
    return TOY_PLAIN


def test_off_without_cache_dir_and_fallback_for_unexportable_steps(tmp_path):
    off = stepcache.CachedStep(toy_step, key="k", cache_dir="")
    assert_same(toy_run(off), toy_plain())
    assert off.source == "jit"

    def with_callback(state, batch):
        jax.debug.callback(lambda x: None, batch["x"])
        return toy_step(state, batch)

    cb = stepcache.CachedStep(with_callback, key="k", cache_dir=str(tmp_path))
    assert_same(toy_run(cb), toy_plain())
    assert cb.source == "jit" and not (tmp_path / stepcache.SUBDIR).exists()


def test_damaged_file_is_a_miss_and_is_rewritten(tmp_path):
    first = stepcache.CachedStep(toy_step, key="k", cache_dir=str(tmp_path))
    assert_same(toy_run(first), toy_plain())
    assert first.source == "exported"
    data = bytearray(open(first.path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(first.path, "wb").write(bytes(data))
    second = stepcache.CachedStep(toy_step, key="k", cache_dir=str(tmp_path))
    assert_same(toy_run(second), toy_plain())
    assert second.source == "exported"  # re-traced and written again
    third = stepcache.CachedStep(toy_step, key="k", cache_dir=str(tmp_path))
    assert_same(toy_run(third), toy_plain())
    assert third.source == "cache"
    # A state of another structure than the exported one goes to plain jit, not to a wrong program.
    assert_same(
        third({**toy_make(), "extra": jnp.ones(())}, {"x": jnp.ones((16, 8))})[1],
        jax.jit(toy_step)(toy_make(), {"x": jnp.ones((16, 8))})[1],
    )
    # An unwritable cache directory (a path under a regular file) only loses the cache.
    blocked = tmp_path / "file"
    blocked.write_text("x")
    fourth = stepcache.CachedStep(toy_step, key="k", cache_dir=str(blocked / "cache"))
    assert_same(toy_run(fourth), toy_plain())
    assert fourth.source == "exported" and not os.path.exists(fourth.path)


def test_key_changes_with_what_decides_the_trace(monkeypatch):
    state = jax.eval_shape(lambda: {"w": jnp.zeros((3, 3)), "n": jnp.zeros((), jnp.int32)})
    batch = {"image": jnp.zeros((4, 8, 8, 1))}
    base = stepcache.cache_key("k", state, batch)
    assert stepcache.cache_key("k", state, batch) == base  # deterministic
    assert stepcache.cache_key("k2", state, batch) != base
    assert stepcache.cache_key("k", state, {"image": jnp.zeros((8, 8, 8, 1))}) != base
    assert stepcache.cache_key("k", state, {"image": jnp.zeros((4, 8, 8, 1), jnp.bfloat16)}) != base
    assert stepcache.cache_key("k", {**state, "extra": jnp.zeros(())}, batch) != base
    # A table entry added from outside vggjax counts with its source.
    monkeypatch.setitem(initializers.REGISTRY, "mine", toy_make)
    with_mine = stepcache.cache_key("k", state, batch)
    assert with_mine != base
    monkeypatch.setitem(initializers.REGISTRY, "mine", toy_step)
    assert stepcache.cache_key("k", state, batch) not in (base, with_mine)
    monkeypatch.undo()
    assert stepcache.cache_key("k", state, batch) == base
    with jax.default_matmul_precision("float32"):
        assert stepcache.cache_key("k", state, batch) != base
    stepcache.source_digest.cache_clear()
    assert stepcache.cache_key("k", state, batch) == base  # the source digest is stable


def test_a_step_cached_under_one_compute_policy_is_not_reused_under_another(tmp_path):
    """The trainer's key holds config.compute: a step traced under "xla" is another file than
    "auto"'s.

    On CPU the two are different programs (im2col etc. vs lax.conv), so serving one for the
    other would run the wrong formulations; their values agree to float tolerance.
    """
    steps = {}
    for compute in ("auto", "xla", "auto"):
        config = tiny_config(num_devices=1, compilation_cache=str(tmp_path), compute=compute)
        tx = optim.make_optimizer(config.optim, steps_per_epoch=10, total_steps=3)
        graphdef, eval_graphdef, make = train.init_state(config, NUM_CLASSES, 1, tx)
        key = json.dumps(
            config.to_dict(), sort_keys=True, default=repr
        )  # what the trainer's key is made of
        runner, state = training.make_runner(
            config, graphdef, eval_graphdef, tx, "softmax_cross_entropy", make(), False, key
        )
        b = synthetic_batches(1)[0]
        _, m = runner.train_step(state, runner.put_batch(b))
        steps.setdefault(compute, []).append(
            (runner.train_step.source, runner.train_step.path, float(m["loss"]))
        )
    (auto_first, auto_again), (xla_first,) = steps["auto"], steps["xla"]
    assert auto_first[0] == "exported" and xla_first[0] == "exported" and auto_again[0] == "cache"
    assert xla_first[1] != auto_first[1] and auto_again[1] == auto_first[1]
    np.testing.assert_allclose(xla_first[2], auto_first[2], rtol=1e-5)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_trainer_runner_with_export_cache_equals_plain_on_8_devices(tmp_path):
    """The trainer's mesh-jit runner through the export cache (first traced, then read) equals
    it without."""
    ref = run_steps("jit", 8)
    for expected_source in ("exported", "cache"):
        config = tiny_config(num_devices=8, compilation_cache=str(tmp_path))
        tx = optim.make_optimizer(config.optim, steps_per_epoch=10, total_steps=3)
        graphdef, eval_graphdef, make = train.init_state(config, NUM_CLASSES, 1, tx)
        runner, state = training.make_runner(
            config, graphdef, eval_graphdef, tx, "softmax_cross_entropy", make(), False, "tests"
        )
        losses = []
        for b in synthetic_batches(3):
            state, m = runner.train_step(state, runner.put_batch(b))
            losses.append(float(runner.fetch(m)["loss"]))
        assert runner.train_step.source == expected_source
        np.testing.assert_array_equal(losses, ref.losses)
        assert_same(jax.device_get(state), ref.final)
        assert all(
            s.is_fully_replicated
            for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, state))
        )
