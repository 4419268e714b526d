"""Checkpointer: round trips, retention, sharding, shape checks, damaged steps, init_from."""

import logging
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vggjax.checkpoint import Checkpointer, nonfinite_paths, restore_params_from
from vggjax.errors import CheckpointError


class Tiny(nnx.Module):
    def __init__(self, num_classes: int = 4, *, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.fc = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.bn(self.fc(x)))


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # a typed PRNG key (orbax stores its key data)


def make_state(num_classes: int = 4, seed: int = 0, step: int = 0) -> TrainState:
    _, params, batch_stats = nnx.split(Tiny(num_classes, seed=seed), nnx.Param, nnx.BatchStat)
    # Non-trivial running stats and momentum so a round trip really carries values.
    batch_stats = jax.tree.map(lambda x: x + 0.5, batch_stats)
    opt_state = optax.sgd(0.1, momentum=0.9).init(params)
    opt_state = jax.tree.map(lambda x: x + 0.25, opt_state)
    rng = jax.random.key(seed)
    return TrainState(jnp.asarray(step, jnp.int32), params, batch_stats, opt_state, rng)


def abstract(tree):
    return jax.eval_shape(lambda: tree)


def assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.isdigit())


def test_round_trip_state_and_meta(tmp_path):
    state = make_state(step=7)
    meta = {
        "data": {"epoch": 1, "index": 64},
        "config": {"arch": "tiny", "lr": 0.1},
        "fingerprint": "abc",
    }
    with Checkpointer(tmp_path / "w") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state, meta)
        ckpt.wait()
        assert ckpt.latest_step() == 7
    with Checkpointer(tmp_path / "w") as ckpt:  # a fresh process resuming
        assert ckpt.latest_step() == 7
        restored, got_meta = ckpt.restore(abstract(state))
        assert ckpt.read_meta() == meta
    assert got_meta == meta
    assert isinstance(restored, TrainState)
    assert isinstance(restored.params, nnx.State)
    assert_tree_equal(restored, state)


def test_keep_last_n_interval_and_same_step_noop(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
        saved = [s for s in range(1, 9) if ckpt.save(s, state)]
        assert saved == [2, 4, 6, 8]
        assert not ckpt.save(8, state, force=True)  # the same step again: no-op
        assert not ckpt.save(5, state, force=True)  # older than the latest: no-op
        assert ckpt.save(9, state, force=True)  # off-interval, forced
        ckpt.wait()
        assert ckpt.all_steps() == [8, 9]
    assert step_dirs(tmp_path) == ["8", "9"]


def test_restore_into_replicated_and_data_sharding(tmp_path):
    mesh = jax.make_mesh((8,), ("data",))
    replicated = NamedSharding(mesh, P())
    state = {
        "model": jax.device_put(make_state(), replicated),
        "buffer": jax.device_put(jnp.arange(32.0).reshape(16, 2), NamedSharding(mesh, P("data"))),
    }
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        # jax.eval_shape gives shardings on an abstract mesh; jax.set_mesh supplies the devices.
        with jax.set_mesh(mesh):
            restored, _ = ckpt.restore(jax.eval_shape(lambda: state))
        # A concrete target of ShapeDtypeStructs with explicit shardings works without a mesh
        # context.
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        restored2, _ = ckpt.restore(target, step=1)
        # No mesh at all: the abstract shardings are dropped and the saved ones are used.
        restored3, _ = ckpt.restore(jax.eval_shape(lambda: state))
    for r in (restored, restored2, restored3):
        assert_tree_equal(r, state)
        for x, y in zip(jax.tree.leaves(r), jax.tree.leaves(state)):
            assert x.sharding.is_equivalent_to(y.sharding, x.ndim)
    assert restored["buffer"].addressable_shards[0].data.shape == (2, 2)  # split over 8 devices
    assert restored["model"].params["fc"]["kernel"][...].sharding.is_fully_replicated


def test_shape_mismatch_names_paths_and_shapes(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, make_state(num_classes=4))
        ckpt.wait()
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(abstract(make_state(num_classes=10)))
    msg = str(err.value)
    assert "\n" not in msg
    assert "params.head.kernel (4, 4) in checkpoint vs (4, 10) in model" in msg
    assert "and 1 more" in msg  # kernel, bias and the two momentum buffers: 4 in all
    assert "--workdir" in msg and "--config.init_from" in msg


def test_structure_mismatch_lists_missing_paths(tmp_path):
    state = {"params": {"w": jnp.ones(2)}}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        with pytest.raises(CheckpointError, match=r"params\.b missing from checkpoint"):
            ckpt.restore(abstract({"params": {"w": jnp.ones(2), "b": jnp.ones(2)}}))


# A failed tensorstore read leaves callbacks aimed at orbax's already-closed asyncio loop;
# Python reports them as "Exception ignored ... Event loop is closed". Harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_latest_step_falls_back_with_warning(tmp_path, caplog):
    good, newer = make_state(seed=1), make_state(seed=2)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, good, {"at": 1})
        ckpt.save(2, newer, {"at": 2})
    # Step 2 is committed but its array files got truncated (e.g. the disk filled up) ...
    data_files = [
        p for p in (tmp_path / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for p in data_files:
        os.truncate(p, 3)
    # ... and a later save was killed half-way, leaving an uncommitted tmp dir.
    (tmp_path / "3.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)

    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        with caplog.at_level(logging.WARNING, logger="vggjax.checkpoint"):
            restored, meta = ckpt.restore(abstract(good))
        assert meta == {"at": 1}
        assert_tree_equal(restored, good)
        assert "step 2" in caplog.text and "unreadable" in caplog.text
        # Training resumes from step 1 and may write step 2 again: the damaged one is replaced.
        assert ckpt.save(2, newer, {"at": 2})
        ckpt.wait()
        restored, meta = ckpt.restore(abstract(good))
    assert meta == {"at": 2}
    assert_tree_equal(restored, newer)
    assert step_dirs(tmp_path) == ["1", "2"]
    assert not (tmp_path / "3.orbax-checkpoint-tmp-1234").exists()  # cleaned up on open


# A failed tensorstore read leaves callbacks aimed at orbax's already-closed asyncio loop;
# Python reports them as "Exception ignored ... Event loop is closed". Harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_explicit_damaged_step_and_empty_dir_raise(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore(abstract(make_state()))
    with Checkpointer(tmp_path / "w") as ckpt:
        ckpt.save(1, make_state())
        ckpt.wait()
        with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
            ckpt.restore(abstract(make_state()), step=5)
        (tmp_path / "w" / "1" / "state" / "_METADATA").write_text("{trunc")
        with pytest.raises(CheckpointError, match="cannot read checkpoint step 1"):
            ckpt.restore(abstract(make_state()), step=1)
        with pytest.raises(CheckpointError, match="no readable checkpoint"):
            ckpt.restore(abstract(make_state()))


def test_nonfinite_state_is_refused_and_nothing_written(tmp_path):
    state = make_state()
    bad = state.replace(params=jax.tree.map(lambda x: x.at[0].set(jnp.nan), state.params))
    assert nonfinite_paths(state) == []
    assert "params.fc.bias" in nonfinite_paths(bad)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(
            CheckpointError, match=r"refusing to save step 1: non-finite values in params\."
        ):
            ckpt.save(1, bad)
        ckpt.wait()
        assert ckpt.latest_step() is None
    assert step_dirs(tmp_path) == []
    # A separate folder: the first manager's background threads (cleanup of its refused,
    # uncommitted save) once raced a second manager in the same folder under heavy load.
    with Checkpointer(tmp_path / "unchecked", check_finite=False, async_save=False) as ckpt:
        assert ckpt.save(1, bad)  # the check is optional
        restored, _ = ckpt.restore(abstract(bad))
    assert math.isnan(float(restored.params["fc"]["bias"][...][0]))


def test_meta_must_be_json(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="JSON"):
            ckpt.save(1, make_state(), {"bad": object()})


def test_restore_params_from_keeps_fresh_head(tmp_path):
    pretrained = make_state(num_classes=4, seed=1)
    with Checkpointer(tmp_path / "pre") as ckpt:
        ckpt.save(5, pretrained)
    fresh = make_state(num_classes=10, seed=2)
    target = {"params": fresh.params, "batch_stats": fresh.batch_stats}
    loaded, skipped = restore_params_from(tmp_path / "pre", target)
    assert sorted(skipped) == [
        "params.head.bias: checkpoint (4,) vs model (10,)",
        "params.head.kernel: checkpoint (4, 4) vs model (4, 10)",
    ]
    assert isinstance(loaded["params"], nnx.State)
    assert_tree_equal(loaded["params"]["head"], fresh.params["head"])
    assert_tree_equal(loaded["params"]["fc"], pretrained.params["fc"])
    assert_tree_equal(loaded["params"]["bn"], pretrained.params["bn"])
    assert_tree_equal(loaded["batch_stats"], pretrained.batch_stats)
    # A step directory works too, and nothing matching at all is an error.
    again, _ = restore_params_from(tmp_path / "pre" / "5", target)
    assert_tree_equal(again, loaded)
    with pytest.raises(CheckpointError, match="nothing in"):
        restore_params_from(tmp_path / "pre", {"other": {"w": jnp.ones(3)}})
    with pytest.raises(CheckpointError, match="no such directory"):
        restore_params_from(tmp_path / "missing", target)


def test_async_save_survives_donated_arrays(tmp_path):
    # The trainer donates its state to the next step right after `save` returns.
    state = {"w": jnp.arange(4096.0).reshape(64, 64)}
    expected = np.asarray(state["w"])
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, state)
        state["w"].delete()
        ckpt.wait()
        restored, _ = ckpt.restore({"w": jax.ShapeDtypeStruct((64, 64), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(restored["w"]), expected)
