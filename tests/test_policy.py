"""The compute policy (vggjax.ops.Policy): parsing, resolution per platform, one value through
models, trainer config, summary and bench, and equal values whichever formulations run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vggjax
from vggjax import ops, training
from vggjax.errors import ConfigError
from vggjax.ops import Policy, cpu


def test_spec_round_trip_and_defaults():
    assert Policy.parse(None) == Policy.parse("auto") == Policy() and str(Policy()) == "auto"
    p = Policy.parse("auto, tapgrad_min_pixels=256,argmax_max_pool=False")
    assert (p.mode, p.tapgrad_min_pixels, p.argmax_max_pool) == ("auto", 256, False)
    assert (
        str(p) == "auto,tapgrad_min_pixels=256,argmax_max_pool=False" and Policy.parse(str(p)) == p
    )
    assert Policy.parse({"mode": "xla"}) == Policy("xla") and Policy.parse(p) is p
    assert hash(Policy.parse("cpu")) == hash(
        Policy("cpu")
    )  # a valid static (jit / NNX graphdef) value


@pytest.mark.parametrize(
    "spec, words",
    [
        ("gpu", "unknown compute mode 'gpu'; valid: auto, xla, cpu"),
        ("auto,tapgrad=3", r"unknown field\(s\) tapgrad; valid: mode, im2col_max_pixels"),
        ("auto,tapgrad_min_pixels", "is not field=value"),
        ("auto,tapgrad_min_pixels=-1", "tapgrad_min_pixels must be an integer >= 0"),
        ("auto,fold_pooled_linear=1", "fold_pooled_linear must be True or False"),
        ("auto,im2col_max_rows=lots", "not a number or True/False"),
        (3, "compute must be a policy spec"),
    ],
)
def test_bad_specs_are_one_line_config_errors(spec, words):
    with pytest.raises(ConfigError, match=words) as e:
        Policy.parse(spec)
    assert "\n" not in str(e.value)


def test_auto_resolves_per_platform_and_forced_modes_do_not():
    auto = Policy()
    assert auto.resolve("cpu").mode == "cpu"
    for platform in ("cuda", "rocm", "tpu"):
        assert auto.resolve(platform).mode == "xla"
    assert (
        Policy("xla").resolve("cpu").mode == "xla" and Policy("cpu").resolve("cuda").mode == "cpu"
    )
    assert auto.resolve("cuda").tapgrad_min_pixels == auto.tapgrad_min_pixels  # thresholds kept
    # Per layer: VGG-16's CPU table on CPU, lax.conv everywhere else.
    shapes = [(64, 32, 32, 3, 64), (64, 32, 32, 64, 64), (64, 8, 8, 256, 256), (64, 2, 2, 512, 512)]
    on = lambda platform, policy=auto: [  # noqa: E731
        ops.conv_formulation(policy, platform, (n, h, w, c), (3, 3, c, o))
        for n, h, w, c, o in shapes
    ]
    assert on("cpu") == ["im2col", "rows", "tapgrad", "im2col"]
    assert on("cuda") == on("tpu") == on("cpu", Policy("xla")) == ["lax_conv"] * 4
    assert on("tpu", Policy("cpu")) == on("cpu")


def test_thresholds_move_the_cpu_choice():
    pads = ((1, 1), (1, 1))
    shape = ((8, 8), (3, 3), pads, 256, 256, 64)  # VGG-16's conv3_x at 32x32, batch 64
    assert cpu.choose(Policy(), *shape) == "tapgrad"
    assert cpu.choose(Policy(tapgrad_min_pixels=256), *shape) == "lax_conv"
    assert cpu.choose(Policy(im2col_max_rows=4096), *shape) == "im2col"
    assert cpu.folds_pooled_linear(Policy(), (1, 1), (7, 7), 64)
    assert not cpu.folds_pooled_linear(Policy(fold_pooled_linear=False), (1, 1), (7, 7), 64)


def _tiny(compute, bn=True):
    builder = vggjax.vgg11_bn if bn else vggjax.vgg11
    return builder(
        num_classes=5,
        width=0.0625,
        dropout=0.0,
        head_options={"hidden": 16},
        init="he_normal",
        compute=compute,
        rngs=nnx.Rngs(0),
    )


def _loss_and_grads(model, x):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest):
        logits = nnx.merge(graphdef, params, rest, copy=True)(
            x
        )  # training mode: BatchNorm on batch statistics
        return jnp.sum(jnp.sin(logits) * jnp.arange(1.0, 6.0))

    return jax.jit(jax.value_and_grad(loss))(params, rest)


def test_policy_reaches_every_layer_of_a_model_and_is_in_its_graphdef():
    model = _tiny("auto,tapgrad_min_pixels=4")
    want = Policy(tapgrad_min_pixels=4)
    convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
    assert convs and all(c.conv_general_dilated == ops.Conv(want) for c in convs)
    assert model.compute == model.features.compute == model.head.compute == want
    # Equal policies give equal graph definitions; another policy another one (a jit cache key).
    assert nnx.graphdef(_tiny("auto")) == nnx.graphdef(_tiny(Policy()))
    assert nnx.graphdef(_tiny("auto")) != nnx.graphdef(_tiny("xla"))


@pytest.mark.parametrize("bn", [True, False])
def test_every_policy_computes_the_same_values_and_gradients(bn):
    """32x32 input: im2col on the image layer and the 2x2/1x1 maps, rows on 4-channel layers,
    argmax pooling, the fc6 fold — against plain XLA ops, values and every gradient."""
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    (l_xla, g_xla), (l_cpu, g_cpu), (l_auto, g_auto) = (
        _loss_and_grads(_tiny(c, bn), x) for c in ("xla", "cpu", "auto,tapgrad_min_pixels=16")
    )
    for loss, grads in ((l_cpu, g_cpu), (l_auto, g_auto)):
        np.testing.assert_allclose(loss, l_xla, rtol=1e-4)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_xla)):
            # float32 sums in another order: errors relative to the leaf's scale (conv biases
            # before a BatchNorm have a zero gradient, i.e. rounding noise)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (1.0 + float(np.abs(b).max())))


def test_auto_on_cpu_is_the_cpu_program_with_no_conditional_left():
    """lax.platform_dependent is resolved when lowering: the compiled CPU step is the "cpu" one,
    bit for bit."""
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    auto, forced = _tiny("auto"), _tiny("cpu")
    (la, ga), (lc, gc) = _loss_and_grads(auto, x), _loss_and_grads(forced, x)
    assert float(la) == float(lc)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gc)):
        np.testing.assert_array_equal(a, b)
    graphdef, state = nnx.split(auto)
    hlo = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile().as_text()
    assert (
        " conditional(" not in hlo and " call(" not in hlo
    )  # no HLO conditional op (names in metadata aside)
    assert (
        " conditional("
        in jax.jit(lambda p: jax.lax.cond(p, jnp.sin, jnp.cos, x)).lower(True).compile().as_text()
    )


def test_run_once_compile_options_are_cpu_only_and_compile():
    # The trainability check compiles its probe with these: XLA:CPU's backend optimisations are
    # skipped for a program that runs once; every other platform keeps its defaults.
    assert ops.run_once_options("cpu") == {"xla_backend_optimization_level": 0}
    assert ops.run_once_options("cuda") is None and ops.run_once_options("tpu") is None
    options = ops.run_once_options("cpu")
    options["xla_backend_optimization_level"] = 3  # a copy: the module's stays as declared
    assert cpu.RUN_ONCE_OPTIONS == {"xla_backend_optimization_level": 0}
    x = jnp.arange(6.0)
    f = jax.jit(lambda x: jnp.sin(x) * 2).lower(x).compile(ops.run_once_options("cpu"))
    np.testing.assert_allclose(f(x), np.sin(np.arange(6.0)) * 2, rtol=1e-6)


def test_trainer_config_summary_and_reference_nets_take_the_policy():
    from vggjax import summary, train
    from vggjax.configs import default
    from vggjax.models import reference

    config = default.get_config()
    assert config.compute == "auto"
    config.compute = "xla"
    model = nnx.eval_shape(lambda: train.create_model(config, 10, 1))
    assert model.compute == Policy("xla")
    config.compute = "auto,nope=1"
    with pytest.raises(ConfigError, match="unknown field"):
        training.config.check_config(config)
    text = summary.summary(_tiny("xla"), (1, 32, 32, 3), flops=False)
    assert "Compute policy: xla (lowered for cpu: native XLA ops" in text
    for name, net in reference.NETS.items():
        m = nnx.eval_shape(lambda net=net: net(compute="xla"))
        convs = [c for _, c in nnx.iter_graph(m) if isinstance(c, nnx.Conv)]
        assert convs and all(c.conv_general_dilated.policy == Policy("xla") for c in convs), name
