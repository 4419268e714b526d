"""vggjax.models.options: the shared keyword options, declared once and shown everywhere."""

import inspect

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import vggjax
from vggjax.models import FCHead, registry
from vggjax.models.options import LAYER, NET, REQUIRED, layer_kw, option, takes
from vggjax.ops import Policy

LAYER_NAMES = ["dtype", "param_dtype", "compute", "rngs"]


@takes(NET, init="he_normal")
def _net(width: int = 2, *, depth: int = 1, **options):
    return width, depth, options


def test_takes_writes_the_options_into_the_signature_after_the_own_ones():
    sig = inspect.signature(_net)
    assert list(sig.parameters) == ["width", "depth", "init", "bias_init"] + LAYER_NAMES
    p = sig.parameters
    assert p["init"].default == "he_normal"  # the decorator's default replaces NET's
    assert p["bias_init"].default is None
    assert p["param_dtype"].default is jnp.float32
    assert p["rngs"].default == 0
    assert all(p[k].kind is inspect.Parameter.KEYWORD_ONLY for k in list(p)[2:])


def test_takes_fills_defaults_and_normalises_rngs_and_compute():
    width, depth, options = _net(3, rngs=5, compute="xla")
    assert (width, depth) == (3, 1)
    assert sorted(options) == sorted(["init", "bias_init"] + LAYER_NAMES)
    assert options["init"] == "he_normal" and options["dtype"] is None
    assert isinstance(options["rngs"], nnx.Rngs)
    seed = jax.random.key_data(options["rngs"].params.key.get_value())
    assert jnp.array_equal(seed, jax.random.key_data(nnx.Rngs(5).params.key.get_value()))
    assert options["compute"] == Policy.parse("xla")
    given = nnx.Rngs(1)
    assert _net(rngs=given)[2]["rngs"] is given  # an Rngs passes through untouched
    assert layer_kw(options) == {
        "dtype": None,
        "param_dtype": jnp.float32,
        "rngs": options["rngs"],
    }


def test_unknown_or_missing_option_is_a_type_error_naming_the_callable():
    with pytest.raises(TypeError, match=r"_net\(\) got an unexpected keyword argument 'colour'"):
        _net(colour=1)
    with pytest.raises(TypeError, match=r"FCHead.__init__\(\) missing a required argument: 'rngs'"):
        FCHead(8, 2)


def test_takes_refuses_a_default_for_no_option_and_a_callable_without_kwargs():
    with pytest.raises(TypeError, match="no option.*colour"):
        takes(LAYER, colour=1)
    with pytest.raises(TypeError, match="must end with \\*\\*options"):
        takes(LAYER)(lambda x: x)


def test_required_and_new_groups():
    group = (option("hidden", 7, "int"),)

    @takes(group + LAYER, rngs=REQUIRED)
    def head(n: int, **options):
        return options

    assert inspect.signature(head).parameters["rngs"].default is inspect.Parameter.empty
    assert head(1, rngs=0)["hidden"] == 7


def test_every_registered_model_shows_the_layer_options():
    # The point of declaring them once: each model, VGG or reference net, lists the same
    # dtype / param_dtype / compute / rngs in its signature, which the registry's option check
    # (config.model_options) reads.
    for name, entry in registry.entries().items():
        params = entry.parameters()
        assert params is not None, name
        assert [k for k in params if k in LAYER_NAMES] == LAYER_NAMES, name
        assert params["rngs"].default == 0, name


def test_a_vgg_built_from_an_int_seed_equals_one_built_from_rngs():
    a = vggjax.vgg11(num_classes=3, width=1 / 16, rngs=4)
    b = vggjax.vgg11(num_classes=3, width=1 / 16, rngs=nnx.Rngs(4))
    leaves_a = jax.tree.leaves(nnx.state(a, nnx.Param))
    assert len(leaves_a) == len(jax.tree.leaves(nnx.state(b, nnx.Param))) > 0
    for x, y in zip(leaves_a, jax.tree.leaves(nnx.state(b, nnx.Param))):
        assert jnp.array_equal(x, y)
