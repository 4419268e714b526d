"""The reference-case networks: parameter counts, forward+backward, and the faithful flags."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vggjax
from vggjax.errors import ShapeError
from vggjax.freeze import Frozen
from vggjax.models import reference as S
from vggjax.summary import summarize


def n_params(model, kind=nnx.Param) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, kind)))


def R(seed: int) -> nnx.Rngs:
    # rbg keys: XLA compiles a threefry sampler per parameter shape, which is slow;
    # RngBitGenerator compiles much faster. The models do not care.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _loss(model, x):
    out, feats = model(x, return_features=True)
    return jnp.mean(jax.nn.log_softmax(out)[..., 0]) + jnp.mean(out**2), (out, feats)


# Module-level so that models with the same structure reuse one compiled program.
@nnx.jit
def _step(model, x):
    (value, (out, feats)), g = nnx.value_and_grad(lambda m: _loss(m, x), has_aux=True)(model)
    return value, g, out, feats


@nnx.jit
def _forward(model, x):
    return model(x, return_features=True)


def run(model, x):
    """One jitted forward+backward: (loss, grads w.r.t. every nnx.Param, logits, feats).

    feats come back as a dict sorted by name (jit flattens it); use the summary for order.
    """
    return _step(model, x)


def forward(model, x):
    """Jitted forward only (cheaper to compile): (logits, feats)."""
    return _forward(model, x)


def grads(model, x):
    return run(model, x)[1]


def x_of(n, size, ch=3, seed=0):
    return jnp.asarray(
        np.random.default_rng(seed).standard_normal((n, size, size, ch)), jnp.float32
    )


SMALL = [
    ("net", lambda: S.Net(rngs=R(1)), 32, 2),
    ("net_dropout", lambda: S.NetDropout(8, rngs=R(1)), 32, 2),
    ("net_batchnorm", lambda: S.NetBatchNorm(8, rngs=R(1)), 32, 2),
    (
        "net_res_deep_shared",
        lambda: S.NetResDeep(8, n_blocks=2, shared_block=True, rngs=R(1)),
        32,
        2,
    ),
    ("two_conv_bn", lambda: S.TwoConvBN(rngs=R(1)), 16, 3),
]
# WSDR, vgg16_fc_conv_400, OverFeatSlim, NetWidth/NetDepth/NetRes and independent-block
# NetResDeep run forward+backward in their own tests below (each compile is costly on CPU).


@pytest.mark.parametrize("name,build,size,classes", SMALL, ids=[s[0] for s in SMALL])
def test_forward_backward_under_jit(name, build, size, classes):
    model = build()
    loss, g, logits, feats = run(model, x_of(2, size))
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(g)
    assert leaves and all(np.isfinite(np.asarray(v)).all() for v in leaves)
    assert any(float(jnp.abs(v).max()) > 0 for v in leaves)
    expected = (2, size, size, classes) if name == "two_conv_bn" else (2, classes)
    assert logits.shape == expected and logits.dtype == jnp.float32
    assert set(feats) >= (
        {"conv2"} if name == "two_conv_bn" else {"conv1", "fc1", "fc2", "flatten"}
    )
    # Frozen weights are not differentiated; everything else is.
    assert sum(int(np.prod(v.shape)) for v in leaves) == n_params(model)


def test_net_parameter_counts_in_torch_order():
    model = nnx.eval_shape(lambda: S.Net(rngs=nnx.Rngs(0)))
    assert n_params(model) == 18090
    s = summarize(model, (1, 32, 32, 3), flops=False)
    assert [n for _, n in s.param_tensors] == [432, 16, 1152, 8, 16384, 32, 64, 2]
    assert [p for p, _ in s.param_tensors][:2] == ["conv1/kernel", "conv1/bias"]
    assert (
        n_params(nnx.eval_shape(lambda: S.NetWidth(rngs=nnx.Rngs(0)))) == 38386
    )  # the book's figure


def test_book_net_variants():
    depth, res, width = S.NetDepth(8, rngs=R(3)), S.NetRes(8, rngs=R(3)), S.NetWidth(8, rngs=R(3))
    assert n_params(depth) == n_params(res)
    x = x_of(2, 32)
    (out_depth, fd), (_, g, out_res, fr) = forward(depth, x), run(res, x)
    assert float(jnp.abs(g["conv1"]["kernel"]).max()) > 0
    # Same weights (same seed and layers); only the skip connection differs.
    assert not np.allclose(out_depth, out_res)
    assert "skip_add" in fr and "skip_add" not in fd
    np.testing.assert_allclose(fr["skip_add"], fr["relu3"] + fr["pool2"], rtol=1e-6)
    assert all(k in fd for k in ("relu1", "relu2", "relu3", "relu4", "pool3"))
    _, fw = forward(width, x)
    assert fw["pool2"].shape == (2, 8, 8, 4) and fw["flatten"].shape == (2, 256) and "tanh3" in fw
    with pytest.raises(ShapeError, match="32x32"):
        nnx.eval_shape(
            lambda m: m(jnp.zeros((1, 64, 64, 3))), nnx.eval_shape(lambda: S.Net(rngs=nnx.Rngs(0)))
        )


def test_net_dropout_drops_whole_channels():
    model = S.NetDropout(8, p=0.4, rngs=R(0))
    x = x_of(2, 32, seed=1)
    _, _, _, feats = run(model, x)
    pooled, dropped = np.asarray(feats["pool1"]), np.asarray(feats["conv1_dropout"])
    zero = (dropped == 0).all(axis=(1, 2))  # (N, C): channel dropped everywhere
    assert 0 < zero.mean() < 1
    kept = ~zero
    np.testing.assert_allclose(
        dropped.transpose(0, 3, 1, 2)[kept], pooled.transpose(0, 3, 1, 2)[kept] / 0.6, rtol=1e-5
    )
    model.eval()
    _, _, _, feats = run(model, x)
    np.testing.assert_array_equal(feats["conv1_dropout"], feats["pool1"])


def test_net_res_deep_shared_vs_independent():
    build = lambda **kw: nnx.eval_shape(lambda: S.NetResDeep(8, rngs=nnx.Rngs(0), **kw))  # noqa: E731
    per_block = n_params(nnx.eval_shape(lambda: S.ResBlock(8, rngs=nnx.Rngs(0))))
    assert per_block == 8 * 8 * 9 + 2 * 8  # conv without bias + BN scale/bias
    indep, shared, one = build(n_blocks=3), build(n_blocks=3, shared_block=True), build(n_blocks=1)
    assert n_params(shared) == n_params(one)
    assert n_params(indep) - n_params(shared) == 2 * per_block
    # The shared block really is applied n_blocks times, with one set of weights.
    s = summarize(shared, (1, 32, 32, 3), flops=False)
    conv_rows = [r for r in s.rows if r.name.startswith("block_conv")]
    assert [r.name for r in conv_rows] == ["block_conv#1", "block_conv#2", "block_conv#3"]
    assert [r.params for r in conv_rows] == [576, 0, 0] and {r.module for r in conv_rows} == {
        "block/conv"
    }
    assert sum(r.params for r in s.rows) == s.total_params
    si = summarize(indep, (1, 32, 32, 3), flops=False)
    assert [r.params for r in si.rows if r.type == "Conv"] == [3 * 9 * 8 + 8] + [576] * 3


def test_res_block_init_and_independent_blocks_train():
    model = S.NetResDeep(8, n_blocks=2, rngs=R(0))
    for b in (model.block1, model.block2):
        np.testing.assert_array_equal(b.batch_norm.scale.get_value(), 0.5)
        np.testing.assert_array_equal(b.batch_norm.bias.get_value(), 0.0)
        assert b.conv.bias is None
        std = float(jnp.std(b.conv.kernel.get_value()))
        assert abs(std - np.sqrt(2 / 72)) < 0.12 * np.sqrt(2 / 72)  # kaiming_normal, fan_in = 9·8
    assert not np.allclose(
        model.block1.conv.kernel.get_value(), model.block2.conv.kernel.get_value()
    )
    # The stem keeps PyTorch's default: U(±1/sqrt(fan_in)).
    assert float(jnp.abs(model.conv1.kernel.get_value()).max()) <= 1 / np.sqrt(27)
    _, g, _, feats = run(model, x_of(2, 32))
    assert float(jnp.abs(g["block1"]["conv"]["kernel"]).max()) > 0
    np.testing.assert_allclose(
        feats["block2_add"], feats["block2_relu"] + feats["block1_add"], rtol=1e-6
    )
    # A dict init may override the block's own init explicitly.
    zero = S.NetResDeep(8, n_blocks=1, init={"block*/conv": "zeros"}, rngs=R(0))
    assert float(jnp.abs(zero.block1.conv.kernel.get_value()).max()) == 0.0


def test_wsdr_structure_and_frozen_running_stats():
    # 224 input -> 14x14 map before the GAP (no pool after conv5).
    s = summarize(nnx.eval_shape(lambda: S.wsdr(rngs=nnx.Rngs(0))), (1, 224, 224, 3), flops=False)
    rows = {r.name: r for r in s.rows}
    assert rows["score_relu"].shape == (1, 14, 14, 20) and rows["head_conv1"].shape == (
        1,
        14,
        14,
        1024,
    )
    assert (
        rows["head_conv1"].params == 9 * 512 * 1024 + 1024
        and rows["score"].params == 9 * 1024 * 20 + 20
    )
    assert "pool5" not in rows and rows["gap"].shape == (1, 20) and "fc" not in rows
    model = S.wsdr(width=1 / 16, batch_norm=True, fc=True, rngs=R(1))
    assert model.features.bn1_1.momentum == 1.0 and model.features.bn1_1.epsilon == 1e-3
    assert model.head.score_bn.momentum == 1.0 and model.head.bn1.epsilon == 1e-3
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    model.train()
    _, g, logits, feats = run(model, x_of(2, 32) * 3 + 1)  # nnx.jit writes BatchStat updates back
    assert logits.shape == (2, 20) and all(
        np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g)
    )
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    # Training mode still normalises with the batch statistics.
    bn = np.asarray(feats["bn1_1"])
    np.testing.assert_allclose(bn.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    assert {"score_relu", "gap", "fc"} <= set(feats)
    # score_relu=False drops the ReLU on the class scores.
    fixed = nnx.eval_shape(lambda: S.wsdr(width=1 / 16, score_relu=False, rngs=nnx.Rngs(0)))
    assert "score_relu" not in [r.name for r in summarize(fixed, (1, 32, 32, 3), flops=False).rows]


def test_vgg16_fc_conv_400_frozen_features():
    model = S.vgg16_fc_conv_400(width=1 / 32, kernel_size=2, rngs=R(1))
    frozen = nnx.state(model, Frozen)
    assert set(frozen.keys()) == {"features"}
    assert n_params(model.head) == n_params(model)  # only the head is trainable
    _, g, logits, feats = run(model, x_of(2, 64))
    assert set(g.keys()) == {"head"}
    assert feats["fc8"].shape == (2, 1, 1, 3) and logits.shape == (2, 3)
    np.testing.assert_array_equal(logits, feats["fc8"][:, 0, 0])  # avg pool of 1x1 is a no-op


def test_overfeat_conv12_reads_input_leaves_conv11_untrained():
    model = S.OverFeatSlim(width=1 / 16, dropout=0.0, conv12_reads_input=True, rngs=R(1))
    assert model.conv12.kernel.get_value().shape[2] == 3
    g = grads(model, x_of(2, 60))
    assert float(jnp.abs(g["conv11"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g["conv11"]["bias"]).max()) == 0.0
    assert float(jnp.abs(g["conv12"]["kernel"]).max()) > 0.0
    fixed = nnx.eval_shape(lambda: S.OverFeatSlim(width=1 / 16, rngs=nnx.Rngs(0)))
    assert fixed.conv12.kernel.shape[2] == 4  # conv12 reads conv11's 64 * width channels
    s = summarize(fixed, (1, 60, 60, 3), flops=False)
    assert [r.name for r in s.rows][:4] == ["conv11", "relu11", "conv12", "relu12"]
    assert {r.name: r for r in s.rows}["conv12"].shape == (1, 56, 56, 8)  # 60 -> 58 -> 56


def test_overfeat_pool_and_dropout_flags():
    x = x_of(4, 60)
    shape = lambda m: nnx.eval_shape(lambda m: m(x), m).shape  # noqa: E731
    buggy = nnx.eval_shape(
        lambda: S.OverFeatSlim(width=1 / 16, pool_in_train_only=True, rngs=nnx.Rngs(0))
    )
    assert shape(buggy) == (4, 3)
    buggy.eval()
    assert shape(buggy) == (4, 4, 4, 3)  # evaluation skips the pooling: a 4x4 score map
    fixed = nnx.eval_shape(lambda: S.OverFeatSlim(width=1 / 16, rngs=nnx.Rngs(0)))
    fixed.eval()
    assert shape(fixed) == (4, 3)
    with pytest.raises(ShapeError):
        nnx.eval_shape(lambda m: m(x_of(1, 20)), fixed)
    drop = S.OverFeatSlim(width=1 / 16, dropout_on_logits=True, rngs=R(1))
    logits, feats = forward(drop, x)
    logits = np.asarray(logits)
    assert (logits == 0).any() and not (logits == 0).all()  # about half the logits are zeroed
    np.testing.assert_array_equal(
        logits[logits != 0], 2 * np.asarray(feats["fc9"])[:, 0, 0][logits != 0]
    )


def test_overfeat_init_and_extra_1x1():
    m = S.OverFeatSlim(width=1 / 16, extra_1x1=1, rngs=R(1))
    assert m.fc7_1.kernel.get_value().shape == (1, 1, 64, 64)
    for name in ("fc6", "fc7", "fc7_1"):
        layer = getattr(m, name)
        np.testing.assert_allclose(layer.bias.get_value(), 0.1)
        assert float(jnp.abs(layer.kernel.get_value()).max()) <= 2 * 0.005 + 1e-7  # truncated at 2σ
    np.testing.assert_array_equal(m.fc9.bias.get_value(), 0.0)
    assert float(jnp.abs(m.fc9.kernel.get_value()).max()) <= 0.01 + 1e-7
    np.testing.assert_array_equal(m.conv3.bias.get_value(), 0.0)
    bound = np.sqrt(6 / (9 * 8 + 9 * 8))  # Xavier uniform for conv2 (8 -> 8 channels at width 1/16)
    w = np.asarray(m.conv2.kernel.get_value())
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    s = summarize(
        nnx.eval_shape(lambda: S.OverFeatSlim(extra_1x1=1, rngs=nnx.Rngs(0))),
        (1, 60, 60, 3),
        flops=False,
    )
    assert [r.name for r in s.rows][-6:] == ["fc7", "relu7", "fc7_1", "relu7_1", "avgpool", "fc9"]
    rows = {r.name: r for r in s.rows}
    assert rows["fc7_1"].params == 1024 * 1024 + 1024 and rows["fc6"].shape == (1, 4, 4, 512)


def test_two_conv_bn_init_runs():
    x = x_of(1, 16)
    g = grads(S.TwoConvBN(init="zeros", rngs=R(0)), x)
    assert float(jnp.abs(g["conv1"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g["conv2"]["kernel"]).max()) == 0.0
    only = S.TwoConvBN(init="zeros", only_conv2=True, rngs=R(0))
    _, g, logits, feats = run(only, x)
    assert list(feats) == ["conv2"] and logits.shape == (1, 16, 16, 3)
    assert float(jnp.abs(g["conv2"]["kernel"]).max()) > 0.0
    five = S.TwoConvBN(init="constant(5)", rngs=R(0))
    np.testing.assert_array_equal(five.conv1.kernel.get_value(), 5.0)
    np.testing.assert_array_equal(five.conv2.kernel.get_value(), 5.0)
    he = S.TwoConvBN(rngs=R(0))
    assert float(jnp.std(he.conv1.kernel.get_value())) > 0.1 and he.conv1.bias is None


def test_registry_and_exports():
    """The reference nets are registered by name (the trainer's config.model) and live in
    vggjax.models.reference only; vggjax.* is the VGG API."""
    from vggjax.models import registry

    reference = {
        "wsdr",
        "wsdr_bn",
        "vgg16_fc_conv_400",
        "net",
        "net_width",
        "net_dropout",
        "net_batchnorm",
        "net_depth",
        "net_res",
        "net_res_deep",
        "overfeat_slim",
        "two_conv_bn",
    }
    assert set(S.NETS) == reference == set(registry.names("reference"))
    assert set(registry.names("vgg")) == set(vggjax.ARCHS)
    assert all(registry.get(n) is S.NETS[n] for n in reference)
    for name in (
        "Net",
        "NetResDeep",
        "OverFeatSlim",
        "TwoConvBN",
        "wsdr",
        "vgg16_fc_conv_400",
        "SEED_NETS",
    ):
        assert not hasattr(vggjax, name), name
    assert set(vggjax.__all__) >= {
        "VGG",
        "vgg16_bn",
        "FCHead",
        "ConvHead",
        "GAPHead",
        "initializers",
        "summary",
        "convert",
        "features",
        "linen",
        "freeze",
        "errors",
        "ops",
    }
    assert S.NETS["wsdr_bn"].input_size == 224 and S.NETS["overfeat_slim"].input_size == 60
    model = nnx.eval_shape(lambda: S.NETS["wsdr_bn"](rngs=nnx.Rngs(0)))
    assert model.head.score_bn is not None
