"""Per-layer diagnostics: gradient norms, activation statistics, dead ReLUs, NaN location."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vggjax
from vggjax import diagnostics as D

X = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
Y = jnp.array([0, 2])


def _make_step(graphdef):
    """A jitted train-step-like function: forward with feats, nnx.grad over Params, stats."""

    @jax.jit
    def step(state, x, y):
        model = nnx.merge(graphdef, state)

        def loss_fn(m):
            logits, feats = m(x, return_features=True)
            # OrderedDict: jax keeps its order through grad's aux and jit (it sorts dicts).
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, y
            ).mean(), collections.OrderedDict(feats)

        grads, feats = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(model)
        params = nnx.state(model, nnx.Param)
        return D.layer_stats(params, grads, feats), grads, feats, params

    return step


def _he_normal_numpy(key, shape, dtype=jnp.float32):
    # He-normal drawn by NumPy: the registry's schemes compile one XLA program per kernel
    # shape, which costs the CI's time; the statistics under test do not care.
    fan_in = int(np.prod(shape[:-1]))
    rng = np.random.default_rng(sum(shape))
    return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape), dtype)


@pytest.fixture(scope="module")
def model():
    # BatchNorm in eval mode (running stats: identity at init) so a bias shift reaches the ReLU.
    m = vggjax.vgg11_bn(num_classes=3, width=1 / 16, init=_he_normal_numpy, rngs=nnx.Rngs(0))
    m.eval()
    return m


@pytest.fixture(scope="module")
def runs(model):
    """(healthy, dead): each (stats, grads, feats, params) from one compiled step."""
    graphdef, state = nnx.split(model)
    step = _make_step(graphdef)
    healthy = step(state, X, Y)
    # A hugely negative bias makes conv1_1's output negative everywhere: relu1_1 dies.
    dead_model = nnx.clone(model)
    bias = dead_model.features.conv1_1.bias
    bias.set_value(jnp.full_like(bias.get_value(), -1e3))
    dead = step(nnx.split(dead_model)[1], X, Y)  # same structure and shapes: no recompilation
    return healthy, dead


def test_grad_norms_match_linalg_norm(runs):
    stats, grads, _, _ = runs[0]
    assert isinstance(stats, collections.OrderedDict)
    # Each leaf's norm separately (one jit for all leaves rather than an eager op per shape).
    norms, total, ours = jax.jit(
        lambda g: (
            [jnp.linalg.norm(x.reshape(-1)) for x in jax.tree_util.tree_leaves(g)],
            optax.tree.norm(g),
            D.global_grad_norm(g),
        )
    )(grads)
    flat = dict(zip(D.layer_names(grads), norms))
    assert "features/conv1_1/kernel" in flat and "head/fc8/bias" in flat
    per_layer = collections.defaultdict(float)
    for name, norm in flat.items():
        ref = float(norm)
        np.testing.assert_allclose(float(stats[f"grad_norm/{name}"]), ref, rtol=1e-5, atol=1e-8)
        per_layer[name.rsplit("/", 1)[0]] += ref**2
    for layer, sq in per_layer.items():
        np.testing.assert_allclose(
            float(stats[f"grad_norm/{layer}"]), np.sqrt(sq), rtol=1e-5, atol=1e-8
        )
    total = float(total)
    np.testing.assert_allclose(float(stats["global_grad_norm"]), total, rtol=1e-5)
    np.testing.assert_allclose(float(ours), total, rtol=1e-5)
    assert total > 0


def test_weight_and_activation_stats_match_numpy(runs):
    stats, _, feats, params = runs[0]
    kernel = np.asarray(params["features"]["conv2_1"]["kernel"].get_value())
    np.testing.assert_allclose(
        float(stats["weight_mean/features/conv2_1"]), kernel.mean(), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(float(stats["weight_var/features/conv2_1"]), kernel.var(), rtol=1e-4)
    assert "weight_mean/features/conv2_1/bias" not in stats  # kernels only
    assert [k.split("/", 1)[1] for k in stats if k.startswith("act_mean/")] == list(feats)
    for name, x in feats.items():
        x = np.asarray(x, np.float64)
        np.testing.assert_allclose(float(stats[f"act_mean/{name}"]), x.mean(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(float(stats[f"act_std/{name}"]), x.std(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(float(stats[f"zero_frac/{name}"]), (x == 0).mean(), atol=1e-6)


def test_dead_relu_fraction(runs):
    (healthy, *_), (dead, *_) = runs
    assert float(healthy["dead_frac/relu1_1"]) == 0.0
    assert float(dead["dead_frac/relu1_1"]) == 1.0
    assert float(dead["zero_frac/relu1_1"]) == 1.0
    relus = [k.split("/", 1)[1] for k in healthy if k.startswith("dead_frac/")]
    assert relus == [
        "relu1_1",
        "relu2_1",
        "relu3_1",
        "relu3_2",
        "relu4_1",
        "relu4_2",
        "relu5_1",
        "relu5_2",
        "relu6",
        "relu7",
    ]
    assert "dead_frac/conv1_1" not in healthy and "dead_frac/drop6" not in healthy


def test_dead_frac_counts_channels_zero_for_every_example():
    x = np.ones((2, 3, 3, 4), np.float32)
    x[..., 0] = 0  # dead: zero everywhere
    x[0, ..., 1] = 0  # zero for one example only: alive
    x[:, 1, 1, 2] = 0  # zero at one position only: alive
    x[..., 3] = -0.0  # negative zero is zero
    stats = jax.jit(lambda f: D.layer_stats(None, None, f))(
        {"relu1": jnp.asarray(x), "conv1": jnp.asarray(x)}
    )
    assert float(stats["dead_frac/relu1"]) == 0.5
    assert "dead_frac/conv1" not in stats
    np.testing.assert_allclose(float(stats["zero_frac/relu1"]), (x == 0).mean())
    custom = D.layer_stats(None, None, {"relu1": x, "conv1": x}, relu_names={"conv1"})
    assert "dead_frac/conv1" in custom and "dead_frac/relu1" not in custom
    assert [
        k
        for k in D.layer_stats(None, None, {"a": x}, relu_names=lambda n: True)
        if k.startswith("dead")
    ] == ["dead_frac/a"]


def test_dead_frac_under_pmap_uses_the_global_batch():
    if jax.local_device_count() < 2:
        pytest.skip("needs 2 devices")
    x = np.ones((2, 3, 3, 2), np.float32)
    x[..., 0] = 0  # dead on both devices
    x[0, ..., 1] = 0  # zero on device 0 only: alive globally
    f = jax.pmap(
        lambda f: D.layer_stats(None, None, f, axis_name="d"),
        axis_name="d",
        devices=jax.local_devices()[:2],
    )
    stats = D.to_python(f({"relu": x[:, None]}))
    assert stats["dead_frac/relu"] == 0.5
    np.testing.assert_allclose(stats["act_mean/relu"], x.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["act_std/relu"], x.std(), rtol=1e-6)


BACKBONE = [
    f"features/{kind}{i}"
    for i in ("1_1", "2_1", "3_1", "3_2", "4_1", "4_2", "5_1", "5_2")
    for kind in ("conv", "bn")
]
HEAD = ["head/fc6", "head/fc7", "head/fc8"]


def test_keys_stable_and_in_network_order(runs, model):
    stats, grads, feats, _ = runs[0]
    # Execution order (conv, bn, relu per block), not pytree order (every bn before every conv).
    assert [n for n, _ in D.by_layer(stats, "grad_norm")] == BACKBONE + HEAD
    assert [n for n, _ in D.by_layer(stats, "grad_norm", leaves=True)][:4] == [
        "features/conv1_1/bias",
        "features/conv1_1/kernel",
        "features/bn1_1/bias",
        "features/bn1_1/scale",
    ]
    assert [n for n, _ in D.by_layer(stats, "weight_var")] == BACKBONE[::2] + HEAD
    assert list(feats)[:5] == ["conv1_1", "bn1_1", "relu1_1", "pool1", "conv2_1"]
    assert [n for n, _ in D.by_layer(stats, "act_std")] == list(feats)
    # Same keys in the same order on a second trace, and as plain floats.
    again = jax.jit(lambda g, f: D.layer_stats(None, g, f))(grads, feats)
    assert [k for k in again if k.startswith("grad_norm")] == [
        k for k in stats if k.startswith("grad_norm")
    ]
    assert list(D.to_python(stats)) == list(stats)
    # A plain dict through jit comes back sorted; feature_order restores network order.
    order = D.feature_order(model, jax.ShapeDtypeStruct(X.shape, X.dtype))
    assert order == list(feats)
    sorted_feats = dict(sorted(feats.items()))
    restored = jax.jit(lambda f: D.layer_stats(None, None, f, order=order))(sorted_feats)
    assert list(restored) == [
        k for k in stats if k.split("/")[0] in ("act_mean", "act_std", "zero_frac", "dead_frac")
    ]
    shuffled = dict(sorted(stats.items()))
    assert [n for n, _ in D.by_layer(shuffled, "act_mean", order=order)] == list(feats)


def test_default_relu_names():
    relu = ["relu1_1", "relu6", "score_relu", "head_relu1", "block1_relu", "relu7_1"]
    other = ["conv1_1", "bn1_1", "score_none", "score", "score_map", "gap", "drop6", "fc8", "pool1"]
    assert all(map(D.default_is_relu, relu)) and not any(map(D.default_is_relu, other))


def test_plain_dict_and_state_agree(runs):
    stats, grads, feats, params = runs[0]
    pure_g, pure_p = nnx.to_pure_dict(grads), nnx.to_pure_dict(params)
    assert D.layer_names(pure_g) == D.layer_names(grads)
    plain = jax.jit(D.layer_stats)(pure_p, pure_g, feats)
    assert list(plain) == list(stats)
    for k in stats:
        np.testing.assert_allclose(float(plain[k]), float(stats[k]), rtol=1e-5, atol=1e-8)


def test_first_nonfinite_names_the_layer(runs):
    grads = runs[0][1]
    names = D.layer_names(grads)
    find = jax.jit(D.first_nonfinite)
    found, index = find(grads)
    assert not bool(found) and int(index) == -1

    def poison(target, value):
        def f(path, g):
            name = "/".join(D._key_name(k) for k in path[:-1])
            return g.at[(0,) * g.ndim].set(value) if name == target else g

        return jax.tree_util.tree_map_with_path(f, grads)

    for target, value in [("head/fc7/kernel", jnp.nan), ("features/conv3_2/bias", jnp.inf)]:
        found, index = find(poison(target, value))
        assert bool(found) and names[int(index)] == target
    found, index = find(nnx.to_pure_dict(poison("features/conv2_1/kernel", jnp.nan)))
    assert bool(found) and names[int(index)] == "features/conv2_1/kernel"
    flags = D.finite_flags(
        [jnp.ones(3), jnp.array([1.0, -jnp.inf]), jnp.zeros((2, 2)), jnp.array([jnp.nan])]
    )
    assert flags.dtype == jnp.bool_ and flags.tolist() == [True, False, True, False]


def test_summarize_table(runs):
    (healthy, *_), (dead, *_) = runs
    lines = D.summarize_table(dead).splitlines()
    assert lines[0].split()[:3] == ["layer", "grad", "norm"]
    row = {line.split()[0]: line for line in lines[2:-1]}
    assert list(row)[:5] == ["conv1_1", "bn1_1", "relu1_1", "pool1", "conv2_1"]
    assert list(row)[-3:] == ["relu7", "drop7", "fc8"]
    assert row["relu1_1"].split()[-2:] == ["100.0", "100.0"]  # zero %, dead %
    assert len(row["conv1_1"].split()) == 7  # layer, grad norm, w mean/var, act mean/std, zero %
    assert "global grad norm" in lines[-1]
    assert D.summarize_table(healthy).splitlines()[4].split()[-1] == "0.0"  # relu1_1 alive


def test_kernel_order_follows_execution():
    model = vggjax.vgg11(num_classes=3, width=1 / 16, rngs=nnx.Rngs(0))
    order = D.kernel_order(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    convs = [
        f"features/conv{b}_{i}/kernel"
        for b, n in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
        for i in range(1, n + 1)
    ]
    assert order == convs + [f"head/fc{i}/kernel" for i in (6, 7, 8)]


def test_kernel_order_residual_blocks():
    from vggjax.models.reference import NetResDeep

    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    # Eleven blocks: execution order, not pytree order (which puts block10 before block2).
    blocks = [f"block{i}/conv/kernel" for i in range(1, 12)]
    order = D.kernel_order(NetResDeep(n_blocks=11, rngs=nnx.Rngs(0)), x)
    assert order == ["conv1/kernel"] + blocks + ["fc1/kernel", "fc2/kernel"]
    # The book's shared block: one kernel, ranked at its first use.
    shared = D.kernel_order(NetResDeep(n_blocks=3, shared_block=True, rngs=nnx.Rngs(0)), x)
    assert shared == ["conv1/kernel", "block/conv/kernel", "fc1/kernel", "fc2/kernel"]
