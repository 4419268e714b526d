"""The CPU formulations compute what the plain XLA ops do (values and gradients), and the CPU
policy picks them from static shapes: im2col convs vs ``lax.conv``, folded fc6 vs pool + fc6,
argmax max pooling vs ``reduce_window``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from vggjax import layers, ops
from vggjax.ops import cpu, xla

NHWC = ("NHWC", "HWIO", "NHWC")


def _ref_conv(x, k, pads):
    return lax.conv_general_dilated(
        x, k, (1, 1), pads, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST
    )


def _loss(f):
    # A non-trivial cotangent so every output position matters to the gradients.
    def loss(x, k):
        y = f(x, k)
        w = jnp.sin(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))
        return jnp.sum(w * y)

    return loss


CASES = [
    ((2, 2), (3, 3), ((1, 1), (1, 1))),  # VGG's last stage at 32x32
    ((1, 1), (3, 3), ((1, 1), (1, 1))),  # 1x1 map with padding: only the centre tap is live
    ((2, 1), (3, 3), ((1, 1), (1, 1))),
    ((1, 3), (3, 3), ((1, 1), (1, 1))),
    ((4, 4), (3, 3), ((1, 1), (1, 1))),
    ((6, 5), (3, 3), ((1, 1), (1, 1))),
    ((3, 3), (3, 3), ((0, 0), (0, 0))),  # VALID: one output pixel
    ((4, 6), (3, 3), ((0, 0), (0, 0))),
    ((2, 2), (3, 3), ((2, 0), (1, 0))),  # asymmetric padding
    ((5, 4), (3, 2), ((2, 0), (1, 0))),  # ... and a non-square kernel
    ((3, 2), (2, 2), ((0, 1), (1, 0))),
    ((4, 4), (1, 3), ((0, 0), (1, 1))),
]
FORMULATIONS = {"im2col": cpu.im2col_conv, "rows": cpu.row_im2col_conv}
P = ops.Policy()  # the default thresholds
CPU = ops.Policy("cpu")  # the CPU formulations, whatever the platform


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
@pytest.mark.parametrize("hw, kernel, pads", CASES)
def test_formulation_matches_lax_conv_forward_and_gradients(name, hw, kernel, pads):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, *hw, 5)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((*kernel, 5, 7)), jnp.float32)
    conv = FORMULATIONS[name]
    f = jax.jit(lambda x, k: conv(x, k, pads, precision=lax.Precision.HIGHEST))
    np.testing.assert_allclose(f(x, k), _ref_conv(x, k, pads), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(_loss(f), argnums=(0, 1)))(x, k)
    want = jax.jit(jax.grad(_loss(lambda x, k: _ref_conv(x, k, pads)), argnums=(0, 1)))(x, k)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_choose_gives_vgg16s_per_layer_formulations():
    """The dispatch table at the two benchmarked shapes (what conv_profile_*.json record as
    'chosen')."""
    from vggjax import bench

    p = ((1, 1), (1, 1))
    pick = lambda size, batch: [  # noqa: E731
        cpu.choose(P, (h, w), (3, 3), p, c, o, n)
        for n, h, w, c, o in (s["shape"] for s in bench.conv_layer_shapes("vgg16_bn", size, batch))
    ]
    assert pick(32, 64) == ["im2col", "rows"] + ["tapgrad"] * 5 + ["im2col"] * 6
    assert pick(112, 8) == ["im2col", "rows"] + ["tapgrad"] * 5 + ["im2col"] * 6


def test_row_im2col_is_chosen_for_narrow_layers_on_large_maps():
    assert cpu.use_row_im2col(P, (3, 3), 64) and not cpu.use_row_im2col(P, (3, 3), 128)
    assert not cpu.use_row_im2col(P, (1, 1), 64)
    f = lambda x, k: ops.Conv(CPU)(x, k, (1, 1), "SAME", dimension_numbers=NHWC)  # noqa: E731
    x, k = (
        jnp.ones((64, 32, 32, 64)),
        jnp.ones((3, 3, 64, 64)),
    )  # VGG-16's conv1_2 at 32x32, batch 64
    prims = {e.primitive.name for e in jax.make_jaxpr(f)(x, k).eqns}
    assert "dot_general" in prims and "conv_general_dilated" not in prims


def test_dispatch_is_static_and_only_for_small_maps():
    p = ((1, 1), (1, 1))
    assert cpu.use_im2col(P, (2, 2), (3, 3), p)
    assert cpu.use_im2col(P, (1, 1), (3, 3), p)
    assert not cpu.use_im2col(P, (4, 4), (3, 3), p, 512)  # batch unknown: only by map size
    assert cpu.use_im2col(P, (4, 4), (3, 3), p, 512, 64)  # 1024 matmul rows
    assert cpu.use_im2col(P, (14, 14), (3, 3), p, 512, 8)  # 1568 rows
    assert not cpu.use_im2col(P, (8, 8), (3, 3), p, 256, 64)  # 4096 rows: lax.conv
    assert cpu.use_im2col(P, (2, 2), (3, 3), p, 512, 4096)  # ≤ 4 pixels: any batch
    assert not cpu.use_im2col(P, (8, 8), (3, 3), p)
    assert not cpu.use_im2col(P, (8, 8), (3, 3), p, 64)
    assert cpu.use_im2col(P, (32, 32), (3, 3), p, 3)  # the RGB image layer
    assert not cpu.use_im2col(P, (2, 2), (1, 1), ((0, 0), (0, 0)))  # 1x1 kernels stay as they are
    # The choice is made while tracing: the jaxpr of a 2x2 layer has a dot and no conv.
    x, k = jnp.ones((2, 2, 2, 4)), jnp.ones((3, 3, 4, 8))
    f = lambda x, k: ops.Conv(CPU)(x, k, (1, 1), p, dimension_numbers=NHWC)  # noqa: E731
    prims = {e.primitive.name for e in jax.make_jaxpr(f)(x, k).eqns}
    assert "dot_general" in prims and "conv_general_dilated" not in prims
    big, k16 = (
        jnp.ones((128, 6, 6, 16)),
        jnp.ones((3, 3, 16, 128)),
    )  # 4608 matmul rows, 36 pixels, 128 outputs
    prims = {e.primitive.name for e in jax.make_jaxpr(f)(big, k16).eqns}
    assert "conv_general_dilated" in prims


def test_unsupported_cases_fall_through_to_lax():
    x, k = jnp.ones((1, 2, 2, 4)), jnp.ones((3, 3, 2, 4))
    f = lambda x, k: ops.Conv(CPU)(  # noqa: E731
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, feature_group_count=2
    )
    prims = {e.primitive.name for e in jax.make_jaxpr(f)(x, k).eqns}
    assert "conv_general_dilated" in prims


@pytest.mark.parametrize("compute", ["auto", "cpu", "xla"])
def test_nnx_conv_layer_same_params_and_values_as_plain_nnx_conv(compute):
    rngs = nnx.Rngs(0)
    ours = layers.conv(6, 4, 3, padding=1, compute=compute, rngs=rngs)
    assert set(nnx.state(ours, nnx.Param).keys()) == {"kernel", "bias"}
    assert ours.kernel.get_value().shape == (3, 3, 6, 4)  # HWIO, unchanged
    k = jax.random.normal(jax.random.key(1), (3, 3, 6, 4))
    ours.kernel.set_value(k)
    ours.bias.set_value(jnp.arange(4.0))
    plain = nnx.Conv(6, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    nnx.update(plain, nnx.state(ours))
    x = jax.random.normal(jax.random.key(2), (2, 2, 2, 6))

    def value_and_grads(model):
        graphdef, params = nnx.split(model)

        def loss(params, x):
            return jnp.sum(jnp.cos(nnx.merge(graphdef, params)(x)))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    (v1, g1), (v2, g2) = value_and_grads(ours), value_and_grads(plain)
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "hw, batch, folds",
    [
        ((1, 1), 4, True),
        ((1, 2), 4, True),
        ((3, 3), 64, True),
        ((3, 3), 4, False),
        ((7, 7), 4, False),
        ((9, 9), 4, False),
    ],
)
def test_pooled_linear_matches_pool_then_matmul(hw, batch, folds):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, *hw, 3)), jnp.float32)
    kern = jnp.asarray(rng.standard_normal((7 * 7 * 3, 5)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(5), jnp.float32)
    hi = lax.Precision.HIGHEST

    def ref(x, kern):
        return (
            jnp.matmul(layers.adaptive_avg_pool(x, 7).reshape(x.shape[0], -1), kern, precision=hi)
            + b
        )

    def ours(x, kern):
        return ops.pooled_linear(x, 7, kern, b, precision=hi, policy=CPU)

    np.testing.assert_allclose(jax.jit(ours)(x, kern), jax.jit(ref)(x, kern), rtol=1e-5, atol=1e-5)
    g1 = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(ours(x, k))), argnums=(0, 1)))(x, kern)
    g2 = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(ref(x, k))), argnums=(0, 1)))(x, kern)
    for a, r in zip(g1, g2):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)
    assert cpu.folds_pooled_linear(P, hw, (7, 7), batch) == folds


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 1))])
def test_tapgrad_conv_matches_lax_conv_forward_and_gradients(pads):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)
    hi = lax.Precision.HIGHEST
    f = jax.jit(lambda x, k: cpu.tapgrad_conv(x, k, pads, hi))
    np.testing.assert_allclose(f(x, k), _ref_conv(x, k, pads), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(_loss(f), argnums=(0, 1)))(x, k)
    want = jax.jit(jax.grad(_loss(lambda x, k: _ref_conv(x, k, pads)), argnums=(0, 1)))(x, k)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_tapgrad_is_chosen_for_wide_layers_on_large_maps():
    assert cpu.use_tap_gradient(P, (16, 16), (3, 3), 128)
    assert not cpu.use_tap_gradient(P, (16, 16), (3, 3), 64)
    assert cpu.use_tap_gradient(P, (8, 8), (3, 3), 256)  # VGG-16's conv3_x at 32x32
    assert not cpu.use_tap_gradient(P, (6, 6), (3, 3), 256)
    x, k = jnp.ones((16, 16, 16, 8)), jnp.ones((3, 3, 8, 128))  # 4096 matmul rows: not im2col
    f = lambda x, k: ops.Conv(CPU)(x, k, (1, 1), "SAME", dimension_numbers=NHWC)  # noqa: E731
    eqns = jax.make_jaxpr(f)(x, k).eqns
    assert any(e.primitive.name.startswith("custom_vjp") for e in eqns)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_max_pool_matches_reduce_window_values_and_gradients(shape):
    x = jax.random.normal(jax.random.key(3), shape)  # continuous values: no ties

    def ref(x):
        return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    np.testing.assert_array_equal(jax.jit(cpu.max_pool)(x), jax.jit(ref)(x))
    np.testing.assert_array_equal(jax.jit(xla.max_pool)(x), jax.jit(ref)(x))
    g1 = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(cpu.max_pool(x)))))(x)
    g2 = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(ref(x)))))(x)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-6)
    # Ties (a dead-ReLU or constant-init map): the whole gradient goes to the first maximum, as
    # reduce_window's.
    z = jnp.zeros(shape).at[:, ::3].set(1.0)
    t1 = jax.jit(jax.grad(lambda x: jnp.sum(cpu.max_pool(x) * 2.0)))(z)
    t2 = jax.jit(jax.grad(lambda x: jnp.sum(ref(x) * 2.0)))(z)
    np.testing.assert_array_equal(t1, t2)
