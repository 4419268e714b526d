"""VGG backbone and heads: exact parameter counts, head equivalences, pooling, shapes, errors."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vggjax
from vggjax.layers import adaptive_avg_pool
from vggjax.models import registry

TINY = 1 / 16  # widths 4..32 and fc hidden 256: fast on CPU


def n_params(model, kind=(nnx.Param, vggjax.Frozen)):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Any(*kind))))


@pytest.mark.parametrize(
    "arch,count",
    [
        ("vgg11", 132_863_336),
        ("vgg11_bn", 132_868_840),
        ("vgg13", 133_047_848),
        ("vgg13_bn", 133_053_736),
        ("vgg16", 138_357_544),
        ("vgg16_bn", 138_365_992),
        ("vgg19", 143_667_240),
        ("vgg19_bn", 143_678_248),
    ],
)
def test_torchvision_parameter_counts(arch, count):
    model = nnx.eval_shape(lambda: vggjax.build(arch, num_classes=1000, head="fc"))
    assert n_params(model) == count
    # BatchNorm running statistics are state, not parameters.
    stats = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    # Each BN layer has as many running statistics (mean, var) as parameters (scale, bias).
    plain = {"vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240}
    assert stats == count - plain[arch.removesuffix("_bn")]


def test_builders_are_exported_and_named():
    for arch in vggjax.ARCHS:
        fn = getattr(vggjax, arch)
        assert fn.__name__ == arch
        model = nnx.eval_shape(lambda: fn(num_classes=7, width=TINY))
        assert model.num_classes == 7


def test_builders_show_every_vgg_option_once_declared():
    # The builders take VGG's keyword options as VGG.__init__ declares them (less cfg and
    # batch_norm, which the name fixes): help(), inspect and the registry's option check see
    # the same list, so a new VGG option reaches every builder and config.model_options.
    want = [k for k in inspect.signature(vggjax.VGG.__init__).parameters]
    want = [k for k in want if k not in ("self", "cfg", "batch_norm")]
    for arch in vggjax.ARCHS:
        sig = inspect.signature(getattr(vggjax, arch))
        assert list(sig.parameters) == want
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values())
        assert sig.parameters["name"].default == arch
        assert sig.parameters["init"].default == "torchvision"
        # name is not an option: the registry names the model
        assert list(registry.get(arch).parameters()) == [k for k in want if k != "name"]
    with pytest.raises(TypeError, match="batch_norm"):
        vggjax.vgg11(batch_norm=True)


def _ported_pair(size_ok=True):
    fc = vggjax.vgg11(
        num_classes=5, head="fc", width=TINY, dropout=0.0, init="he_normal", rngs=nnx.Rngs(1)
    )
    conv = vggjax.vgg11(num_classes=5, head="fc_conv", width=TINY, dropout=0.0, rngs=nnx.Rngs(2))
    nnx.update(conv.features, nnx.state(fc.features))
    conv.head.load_fc(fc.head)
    return fc, conv


def test_fc_and_fc_conv_heads_agree_at_224():
    fc, conv = _ported_pair()
    x = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
    a, b = fc(x), conv(x)
    assert a.shape == b.shape == (2, 5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))


def test_fc_conv_gives_score_map_at_256():
    _, conv = _ported_pair()
    x = jax.random.normal(jax.random.key(0), (1, 256, 256, 3))
    logits, feats = conv(x, return_features=True)
    assert feats["score_map"].shape == (1, 2, 2, 5)
    np.testing.assert_allclose(logits, feats["score_map"].mean(axis=(1, 2)), rtol=1e-6)
    conv.head.return_map = True
    assert conv(x).shape == (1, 2, 2, 5)


def test_adaptive_pool_divisible_matches_reshape_mean():
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 3))
    want = x.reshape(2, 7, 2, 7, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(adaptive_avg_pool(x, 7), want, rtol=1e-6, atol=1e-6)
    assert adaptive_avg_pool(x, 14) is x


@pytest.mark.slow
@pytest.mark.parametrize(
    "size", [(14, 14), (10, 10), (13, 13), (5, 5), (1, 1), (13, 6), (224, 224)]
)
def test_adaptive_pool_matches_torch(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, *size)).astype(np.float32)  # NCHW for torch
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 7).numpy()
    got = adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), 7)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-6, atol=1e-6)


def test_return_features_names_and_order():
    model = vggjax.vgg16_bn(num_classes=3, width=TINY)
    logits, feats = model(jnp.ones((1, 32, 32, 3)), return_features=True)
    names = list(feats)
    for name in (
        "conv1_1",
        "bn1_1",
        "relu1_1",
        "conv1_2",
        "pool1",
        "conv5_3",
        "relu5_3",
        "pool5",
        "fc6",
        "relu7",
        "fc8",
    ):
        assert name in names
    assert (
        names.index("conv1_1")
        < names.index("relu1_1")
        < names.index("pool1")
        < names.index("conv2_1")
    )
    assert feats["relu3_3"].shape == (1, 8, 8, 16)
    np.testing.assert_array_equal(feats["fc8"], logits)


ARCH_HEADS = [(a, "fc") for a in vggjax.ARCHS] + [("vgg11_bn", "gap"), ("vgg11", "fc_conv")]


@pytest.mark.parametrize("arch,head", ARCH_HEADS)
def test_forward_backward_jit_every_param_gets_gradient(arch, head):
    size = 224 if head == "fc_conv" else 32
    width = 1 / 32 if head == "fc_conv" else TINY
    model = vggjax.build(
        arch, num_classes=4, head=head, width=width, init="he_normal", bias_init="constant(0.01)"
    )
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    y = jnp.array([1, 3])

    @jax.jit
    def grads(params, rest):
        m = nnx.merge(graphdef, params, rest)

        def loss(m):
            logits = m(x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), y])

        return nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(m)

    g = grads(params, rest)
    for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
        assert bool(jnp.all(jnp.isfinite(leaf))), path
        assert float(jnp.abs(leaf).max()) > 0, f"zero gradient at {jax.tree_util.keystr(path)}"


def test_batchnorm_batch_stats_in_train_running_stats_in_eval():
    model = vggjax.vgg11_bn(num_classes=3, width=TINY, dropout=0.0)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    bn = model.features.bn1_1
    model.train()
    _, feats = model(x, return_features=True)
    h = feats["bn1_1"]
    # Batch statistics: per-channel mean 0, variance 1 over (N, H, W).
    np.testing.assert_allclose(h.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(h.var(axis=(0, 1, 2)), 1.0, atol=1e-2)
    conv_out = feats["conv1_1"]
    np.testing.assert_allclose(
        bn.mean.get_value(), 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    model.eval()
    _, feats_eval = model(x, return_features=True)
    want = (feats_eval["conv1_1"] - bn.mean.get_value()) / jnp.sqrt(bn.var.get_value() + 1e-5)
    np.testing.assert_allclose(
        feats_eval["bn1_1"], want * bn.scale.get_value() + bn.bias.get_value(), rtol=1e-4, atol=1e-4
    )


def test_width_and_in_channels():
    model = vggjax.vgg11(num_classes=2, width=0.5, in_channels=1)
    assert model.features.conv1_1.kernel.get_value().shape == (3, 3, 1, 32)
    assert model.head.fc6.kernel.get_value().shape == (256 * 49, 2048)
    assert model(jnp.ones((1, 32, 32, 1))).shape == (1, 2)


def test_bfloat16_compute_float32_logits():
    model = vggjax.vgg11(num_classes=2, width=TINY, dtype=jnp.bfloat16)
    _, feats = model(jnp.ones((1, 32, 32, 3)), return_features=True)
    assert feats["conv1_1"].dtype == jnp.bfloat16
    assert model(jnp.ones((1, 32, 32, 3))).dtype == jnp.float32
    assert model.features.conv1_1.kernel.get_value().dtype == jnp.float32


def test_gap_head_options():
    model = vggjax.vgg11(
        num_classes=6,
        head="gap",
        head_options={"hidden": [8], "kernel_size": 3, "score_act": "relu", "fc": True},
        width=TINY,
    )
    logits, feats = model(jnp.ones((2, 64, 64, 3)), return_features=True)
    assert logits.shape == (2, 6)
    assert feats["score_map"].shape == (2, 2, 2, 6)
    assert float(feats["score_map"].min()) >= 0.0  # ReLU on the scores
    assert model.head.score.kernel.get_value().shape == (3, 3, 8, 6)
    assert model.head.fc.kernel.get_value().shape == (6, 6)


def test_freeze_marks_params_non_trainable():
    model = vggjax.vgg11(num_classes=2, width=TINY)
    total = n_params(model)
    frozen = vggjax.freeze(model, "features/*")
    assert "features/conv1_1/kernel" in frozen
    assert n_params(model, (vggjax.Frozen,)) + n_params(model, (nnx.Param,)) == total
    assert all(p.startswith("features/") for p in frozen)
    assert model(jnp.ones((1, 32, 32, 3))).shape == (1, 2)
    vggjax.unfreeze(model)
    assert n_params(model, (nnx.Param,)) == total


# --- bad input -------------------------------------------------------------


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="unknown architecture 'vgg17'.*vgg16"):
        vggjax.build("vgg17")
    with pytest.raises(ValueError, match="unknown head 'dense'.*fc_conv.*gap"):
        vggjax.vgg11(head="dense", width=TINY)
    with pytest.raises(ValueError, match="unknown initializer 'he_norml'.*he_normal"):
        vggjax.vgg11(init="he_norml", width=TINY)
    with pytest.raises(ValueError, match="unknown option.*'?score_activation'?.*score_act"):
        vggjax.vgg11(head="gap", head_options={"score_activation": "relu"}, width=TINY)
    # hidden is one width for fc / fc_conv and a list of widths for gap (an fc config switched
    # to gap).
    with pytest.raises(
        ValueError,
        match=r"head 'gap' option hidden is a list of 1x1-conv widths, e.g. \(256,\), "
        r"or \(\) for none; got 4096",
    ):
        vggjax.vgg11(head="gap", head_options={"hidden": 4096}, width=TINY)
    with pytest.raises(
        ValueError,
        match=r"head 'fc_conv' option hidden is the width of fc6 and fc7, "
        r"a positive integer such as 4096; got \(16,\)",
    ):
        vggjax.vgg11(head="fc_conv", head_options={"hidden": (16,)}, width=TINY)
    with pytest.raises(ValueError, match="head 'fc' option hidden .* got 0"):
        vggjax.vgg11(head="fc", head_options={"hidden": 0}, width=TINY)
    with pytest.raises(
        ValueError, match="head 'gap' option hidden .* got 16"
    ):  # the heads check it themselves
        vggjax.GAPHead(8, 3, hidden=16, rngs=nnx.Rngs(0))


def test_input_too_small_or_wrong_channels():
    model = vggjax.vgg16(num_classes=2, width=TINY)
    with pytest.raises(ValueError, match=r"at least 32x32 \(5 2x2 max-poolings\), got 16x16"):
        model(jnp.ones((1, 16, 16, 3)))
    with pytest.raises(
        ValueError, match=r"expects 3 input channels.*\(N, H, W, 3\).*\(1, 3, 32, 32\)"
    ):
        model(jnp.ones((1, 3, 32, 32)))
    conv = vggjax.vgg16(num_classes=2, head="fc_conv", width=TINY)
    with pytest.raises(ValueError, match=r"at least 224x224 .*7x7 fc_conv window.*got 200x200"):
        conv(jnp.ones((1, 200, 200, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.ones((32, 32, 3)))
