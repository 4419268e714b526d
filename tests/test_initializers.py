"""Initializer registry: empirical statistics, PyTorch-equal fans and bounds, overrides, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vggjax
from vggjax import initializers as I

CONV = (3, 3, 64, 128)  # HWIO: fan_in 576, fan_out 1152
LIN = (4096, 1000)


def draw(spec, shape=CONV, kind="conv"):
    scheme = I.get(spec)
    fn = scheme.conv if kind == "conv" else scheme.linear
    return np.asarray(fn(jax.random.key(0), shape, jnp.float32))


def test_fans_match_pytorch_convention():
    assert I.fans(CONV) == (3 * 3 * 64, 3 * 3 * 128)
    assert I.fans(LIN) == (4096, 1000)


@pytest.mark.parametrize(
    "spec,std",
    [
        ("normal(0.01)", 0.01),
        ("normal(std=0.1)", 0.1),
        ("he_normal", math.sqrt(2 / 576)),
        ("he_normal(fan_out)", math.sqrt(2 / 1152)),
        ("he_uniform", math.sqrt(2 / 576)),
        ("he_uniform(mode='fan_out')", math.sqrt(2 / 1152)),
        ("xavier_normal", math.sqrt(2 / (576 + 1152))),
        ("xavier_uniform", math.sqrt(2 / (576 + 1152))),
        ("lecun_normal", math.sqrt(1 / 576)),
        ("torch_default", math.sqrt(1 / 576) / math.sqrt(3)),  # U(±1/sqrt(fan_in))
        ("trunc_normal(0.005)", 0.005 * 0.879596),  # std of N(0,1) cut at ±2
    ],
)
def test_empirical_std(spec, std):
    w = draw(spec)
    assert abs(w.mean()) < 0.02 * std * 10
    assert w.std() == pytest.approx(std, rel=0.02)


def test_bounds_of_uniform_and_truncated():
    assert np.abs(draw("torch_default")).max() <= 1 / math.sqrt(576) + 1e-7
    assert np.abs(draw("torch_default")).max() > 0.99 / math.sqrt(576)
    assert np.abs(draw("he_uniform")).max() <= math.sqrt(6 / 576) + 1e-7
    assert np.abs(draw("trunc_normal(0.005)")).max() <= 0.01 + 1e-7
    assert np.abs(draw("he_normal")).max() > 2.5 * math.sqrt(2 / 576)  # untruncated, like torch


def test_constant_and_zeros():
    assert np.all(draw("constant(5)") == 5.0)
    assert np.all(draw("zeros") == 0.0)


def test_torchvision_scheme():
    conv = draw("torchvision")
    lin = draw("torchvision", LIN, "linear")
    assert conv.std() == pytest.approx(math.sqrt(2 / 1152), rel=0.02)
    assert lin.std() == pytest.approx(0.01, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("oihw", [(128, 64, 3, 3), (64, 3, 3, 3), (4096, 512, 7, 7), (1000, 4096)])
def test_fans_and_bounds_equal_torch(oihw):
    torch = pytest.importorskip("torch")
    t = torch.empty(oihw)
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(t)
    ours = tuple(oihw[2:]) + (oihw[1], oihw[0]) if len(oihw) == 4 else (oihw[1], oihw[0])
    assert I.fans(ours) == (fan_in, fan_out)
    # torch's default Conv/Linear weight bound and he_normal std for the same layer.
    layer = (
        torch.nn.Conv2d(oihw[1], oihw[0], oihw[2:])
        if len(oihw) == 4
        else torch.nn.Linear(oihw[1], oihw[0])
    )
    tw = layer.weight.detach().numpy()
    tb = layer.bias.detach().numpy()
    scheme = I.torch_default()
    kernel_fn = scheme.conv if len(oihw) == 4 else scheme.linear
    w = np.asarray(kernel_fn(jax.random.key(1), ours, jnp.float32))
    b = np.asarray(scheme.conv_bias(jax.random.key(2), (oihw[0],), jnp.float32, fan_in=fan_in))
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(tw).max() <= bound + 1e-7 and np.abs(w).max() <= bound + 1e-7
    assert np.abs(tb).max() <= bound + 1e-7 and np.abs(b).max() <= bound + 1e-7
    if tw.size > 10000:
        assert w.std() == pytest.approx(tw.std(), rel=0.03)
        torch.nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu")
        h = draw("he_normal", ours, "conv" if len(oihw) == 4 else "linear")
        assert h.std() == pytest.approx(t.numpy().std(), rel=0.03)


def test_model_init_and_per_layer_overrides():
    model = vggjax.vgg11(
        num_classes=3,
        width=1 / 16,
        init={"features/conv1_*": "constant(0.5)", "head/*": "zeros"},
        bias_init={"head/fc8": "constant(0.1)"},
    )
    assert np.all(model.features.conv1_1.kernel.get_value() == 0.5)
    assert np.all(model.head.fc6.kernel.get_value() == 0.0)
    assert np.all(model.head.fc8.bias.get_value() == np.float32(0.1))
    assert np.all(model.head.fc7.bias.get_value() == 0.0)
    # Unmatched layers fall back to the torchvision scheme: kaiming_normal(fan_out).
    w = model.features.conv2_1.kernel.get_value()
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (9 * 8)), rel=0.15)


def test_torch_default_biases_and_callable_init():
    model = vggjax.vgg11(num_classes=3, width=1 / 16, init="torch_default")
    b = model.features.conv2_1.bias.get_value()
    assert float(jnp.abs(b).max()) > 0 and float(jnp.abs(b).max()) <= 1 / math.sqrt(9 * 4)
    model = vggjax.vgg11(
        num_classes=3, width=1 / 16, init=jax.nn.initializers.ones, bias_init="normal(1.0)"
    )
    assert np.all(model.features.conv1_1.kernel.get_value() == 1.0)
    assert float(model.features.conv1_1.bias.get_value().std()) > 0


def test_same_seed_same_weights():
    a = vggjax.vgg11(num_classes=3, width=1 / 16, rngs=nnx.Rngs(3))
    b = vggjax.vgg11(num_classes=3, width=1 / 16, rngs=3)
    for x, y in zip(
        jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param))
    ):
        np.testing.assert_array_equal(x, y)


def test_bad_specs():
    with pytest.raises(
        ValueError, match="unknown initializer 'gaussian'; valid: .*he_normal.*xavier_uniform"
    ):
        I.get("gaussian")
    with pytest.raises(ValueError, match="unknown fan mode 'fan_middle'"):
        I.get("he_normal(fan_middle)")
    with pytest.raises(ValueError, match="bad arguments for initializer"):
        I.get("normal(1, 2, 3)")
    with pytest.raises(ValueError, match="unknown bias initializer 'he_normal'"):
        vggjax.vgg11(width=1 / 16, bias_init="he_normal")
