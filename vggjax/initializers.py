"""Weight initialisers: a named registry, per-layer overrides, and PyTorch-exact fans.

An initialisation *scheme* says how to draw a conv kernel, a linear kernel and their
biases. Every model in vggjax takes ``init`` (weights) and ``bias_init`` (biases), each
one of:

* a name from :data:`REGISTRY`, optionally with arguments: ``"he_normal"``,
  ``"he_normal(fan_out)"``, ``"normal(0.01)"``, ``"trunc_normal(std=0.005)"``,
  ``"constant(5)"``;
* a :class:`Scheme` or a plain JAX initialiser ``f(key, shape, dtype) -> Array``;
* a dict ``{glob over the layer path: one of the above}`` for per-layer overrides, e.g.
  ``{"features/*": "he_normal", "head/fc8": "normal(0.01)"}``. The first matching pattern
  wins; layers that match none keep the model's default scheme.

Kernels are HWIO (conv) and IO (linear). Fans are computed as PyTorch does for the same
layer (fan_in = in_channels·kh·kw, fan_out = out_channels·kh·kw), which is what
``jax.nn.initializers.variance_scaling`` gives for these layouts. Unlike
``jax.nn.initializers.he_normal``/``glorot_normal`` (truncated normals), the ``he_*`` and
``xavier_*`` schemes here are the untruncated distributions of
``torch.nn.init.kaiming_*``/``xavier_*``.

BatchNorm layers always start at scale 1, bias 0 (PyTorch's and torchvision's choice).
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import functools
import math
import re
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax.errors import ConfigError, one_of

Array = jax.Array
KernelInit = Callable[..., Array]  # (key, shape, dtype) -> Array
BiasInit = Callable[..., Array]  # (key, shape, dtype, fan_in) -> Array


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of an HWIO conv kernel or IO linear kernel, as PyTorch counts them."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(scale: float, mode: str, distribution: str) -> KernelInit:
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise one_of("fan mode", mode, ("fan_in", "fan_out"))
    return jax.nn.initializers.variance_scaling(scale, mode, distribution)


def _normal(std: float) -> KernelInit:
    def init(key, shape, dtype=jnp.float32):
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def _trunc_normal(std: float) -> KernelInit:
    # TensorFlow's tf.truncated_normal: `std` is the std of the *untruncated* normal and
    # samples are cut at ±2σ (so the empirical std is ≈0.88·std).
    def init(key, shape, dtype=jnp.float32):
        return (std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)).astype(dtype)

    return init


def _constant(value: float) -> KernelInit:
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


def _uniform_fan_in_bias(key, shape, dtype=jnp.float32, fan_in: int = 1):
    # PyTorch's default bias for Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def _as_bias(init: KernelInit) -> BiasInit:
    def bias(key, shape, dtype=jnp.float32, fan_in: int = 1):
        del fan_in
        return init(key, shape, dtype)

    return bias


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How to initialise conv and linear layers.

    Attributes:
      name: printable name, e.g. ``"he_normal(fan_out)"``.
      conv: kernel initialiser for HWIO conv kernels, ``f(key, shape, dtype)``.
      linear: kernel initialiser for IO linear kernels.
      conv_bias / linear_bias: ``f(key, shape, dtype, fan_in)``, or None for "no
        opinion" (then ``bias_init`` of the model decides, default zeros).
    """

    name: str
    conv: KernelInit
    linear: KernelInit
    conv_bias: BiasInit | None = None
    linear_bias: BiasInit | None = None

    @classmethod
    def same(cls, name: str, kernel: KernelInit, bias: BiasInit | None = None) -> "Scheme":
        """A scheme using ``kernel`` (and ``bias``) for both conv and linear layers."""
        return cls(name, kernel, kernel, bias, bias)


def zeros() -> Scheme:
    """All-zero weights."""
    z = _constant(0.0)
    return Scheme.same("zeros", z, _as_bias(z))


def constant(value: float = 0.0) -> Scheme:
    """Every weight equals ``value``."""
    c = _constant(float(value))
    return Scheme.same(f"constant({value})", c, _as_bias(c))


def normal(std: float = 0.01, mean: float = 0.0) -> Scheme:
    """N(mean, std²) weights (untruncated). The VGG paper's 'variance 10^-2' is std=0.1."""
    n = _normal(float(std))
    if mean:
        base = n
        n = lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) + jnp.asarray(mean, dtype)  # noqa: E731
    return Scheme.same(f"normal({std})", n, _as_bias(n))


def trunc_normal(std: float = 0.01) -> Scheme:
    """TensorFlow ``truncated_normal(stddev=std)``: N(0, std²) cut at ±2·std."""
    t = _trunc_normal(float(std))
    return Scheme.same(f"trunc_normal({std})", t, _as_bias(t))


def xavier_uniform(gain: float = 1.0) -> Scheme:
    """Glorot/Xavier uniform: U(±gain·sqrt(6/(fan_in+fan_out)))
    (``torch.nn.init.xavier_uniform_``)."""
    return Scheme.same("xavier_uniform", _variance_scaling(gain**2, "fan_avg", "uniform"))


def xavier_normal(gain: float = 1.0) -> Scheme:
    """Glorot/Xavier normal: N(0, gain²·2/(fan_in+fan_out)), untruncated (``xavier_normal_``)."""
    return Scheme.same("xavier_normal", _variance_scaling(gain**2, "fan_avg", "normal"))


def he_normal(mode: str = "fan_in") -> Scheme:
    """He/Kaiming normal for ReLU: N(0, 2/fan), untruncated
    (``kaiming_normal_(nonlinearity='relu')``)."""
    return Scheme.same(f"he_normal({mode})", _variance_scaling(2.0, mode, "normal"))


def he_uniform(mode: str = "fan_in") -> Scheme:
    """He/Kaiming uniform for ReLU: U(±sqrt(6/fan)) (``kaiming_uniform_(nonlinearity='relu')``)."""
    return Scheme.same(f"he_uniform({mode})", _variance_scaling(2.0, mode, "uniform"))


def lecun_normal() -> Scheme:
    """LeCun normal: std sqrt(1/fan_in), truncated at 2σ and rescaled (JAX/Keras semantics)."""
    return Scheme.same("lecun_normal", jax.nn.initializers.lecun_normal())


def torch_default() -> Scheme:
    """What PyTorch's Conv2d/Linear do when you do nothing.

    Weights ``kaiming_uniform_(a=sqrt(5))`` = U(±1/sqrt(fan_in)); biases U(±1/sqrt(fan_in)).
    """
    w = _variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return Scheme("torch_default", w, w, _uniform_fan_in_bias, _uniform_fan_in_bias)


def torchvision() -> Scheme:
    """torchvision's VGG scheme: convs kaiming_normal(fan_out, relu) with zero bias, linears
    N(0, 0.01) with zero bias."""
    zero = _as_bias(_constant(0.0))
    return Scheme(
        "torchvision",
        _variance_scaling(2.0, "fan_out", "normal"),
        _normal(0.01),
        zero,
        zero,
    )


REGISTRY: dict[str, Callable[..., Scheme]] = {
    "zeros": zeros,
    "constant": constant,
    "normal": normal,
    "trunc_normal": trunc_normal,
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_uniform": xavier_uniform,
    "glorot_normal": xavier_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "torch_default": torch_default,
    "torchvision": torchvision,
}

BIAS_REGISTRY: dict[str, Callable[..., BiasInit]] = {
    "zeros": lambda: _as_bias(_constant(0.0)),
    "constant": lambda value=0.0: _as_bias(_constant(float(value))),
    "normal": lambda std=0.01: _as_bias(_normal(float(std))),
    "trunc_normal": lambda std=0.01: _as_bias(_trunc_normal(float(std))),
    "torch_default": lambda: _uniform_fan_in_bias,
}

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$")


def _parse_call(spec: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Split ``"name(a, k=v)"`` into ("name", [a], {k: v}); bare words are strings."""
    m = _CALL.match(spec)
    if not m:
        raise ConfigError(
            f"cannot parse initializer {spec!r}; write e.g. 'he_normal' or 'normal(0.01)'"
        )
    name, arg_text = m.group(1), m.group(2)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if arg_text and arg_text.strip():
        try:
            call = ast.parse(f"f({arg_text})", mode="eval").body
        except SyntaxError as e:
            raise ConfigError(
                f"cannot parse the arguments of initializer {spec!r}: {e.msg}"
            ) from None

        def value(node):
            if isinstance(node, ast.Name):  # he_normal(fan_out) without quotes
                return node.id
            return ast.literal_eval(node)

        args = [value(a) for a in call.args]
        kwargs = {k.arg: value(k.value) for k in call.keywords}
    return name, args, kwargs


def _from_registry(spec: str, registry: Mapping[str, Callable[..., Any]], kind: str) -> Any:
    """``registry[name](*args)`` for a spec ``"name(args)"``; a one-line ConfigError for an unknown
    name or bad arguments."""
    name, args, kwargs = _parse_call(spec)
    if name not in registry:
        raise one_of(kind, name, registry)
    try:
        return registry[name](*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments for {kind} {spec!r}: {e}") from None


def get(spec: "InitSpec") -> Scheme:
    """Resolve a weight initialiser spec (name, name with args, Scheme or callable) to a
    :class:`Scheme`."""
    if isinstance(spec, Scheme):
        return spec
    if isinstance(spec, str):
        return _from_registry(spec, REGISTRY, "initializer")
    if callable(spec):
        return Scheme.same(getattr(spec, "__name__", "custom"), spec)
    raise ConfigError(
        f"an initializer must be a name, a callable or a dict of them, got {type(spec).__name__}"
    )


def get_bias(spec: "InitSpec") -> BiasInit:
    """Resolve a bias initialiser spec to ``f(key, shape, dtype, fan_in)``."""
    if isinstance(spec, str):
        return _from_registry(spec, BIAS_REGISTRY, "bias initializer")
    if isinstance(spec, Scheme):
        return spec.conv_bias or _as_bias(_constant(0.0))
    if callable(spec):
        try:  # accept both f(key, shape, dtype) and f(key, shape, dtype, fan_in)
            import inspect

            if "fan_in" in inspect.signature(spec).parameters:
                return spec
        except (TypeError, ValueError):
            pass
        return _as_bias(spec)
    raise ConfigError(f"a bias initializer must be a name or a callable, got {type(spec).__name__}")


InitSpec = Union[str, Scheme, Callable[..., Array], Mapping[str, Any]]


def _fast_key(key: Array) -> Array:
    """An "rbg" key derived from a (threefry) key: same determinism, far cheaper to compile.

    Threefry sampling compiles to a large XLA program per shape; the RngBitGenerator behind
    "rbg" keys compiles much faster.
    """
    data = jax.random.key_data(key).reshape(-1)
    return jax.random.wrap_key_data(jnp.concatenate([data, data])[:4], impl="rbg")


def _draw(
    fn: Callable[..., Array], key: Array, *, shape: tuple[int, ...], dtype, **kwargs
) -> Array:
    return fn(key, shape, dtype, **kwargs)


def _select(spec: InitSpec | None, path: str, default: InitSpec | None) -> InitSpec | None:
    """The spec that applies to the layer at ``path`` (dicts: first matching glob, else
    ``default``)."""
    if isinstance(spec, Mapping):
        for pattern, value in spec.items():
            if fnmatch.fnmatchcase(path, pattern):
                return value
        return default
    return default if spec is None else spec


def layer_paths(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """Every conv and linear layer of ``model`` as ('a/b/c', module), in definition order."""
    return [
        ("/".join(map(str, path)), node)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, (nnx.Conv, nnx.Linear))
    ]


def apply(
    model: nnx.Module,
    init: InitSpec = "torchvision",
    bias_init: InitSpec | None = None,
    *,
    rngs: nnx.Rngs,
    default_init: InitSpec = "torchvision",
) -> nnx.Module:
    """Initialise every conv/linear layer of ``model`` in place and return it.

    Args:
      model: any NNX module; its ``nnx.Conv`` and ``nnx.Linear`` layers are (re)drawn.
      init: weight spec (name, Scheme, callable, or {glob: spec} over layer paths such as
        ``"features/conv1_1"``); unmatched layers use ``default_init``.
      bias_init: bias spec of the same forms; None means "whatever the weight scheme
        says" (``torch_default`` draws U(±1/√fan_in), every other scheme zeros).
      rngs: random streams; the ``params`` stream is split once per layer.
    """
    bad = [p for p in (init, bias_init) if isinstance(p, Mapping) and not p]
    if bad:
        raise ConfigError(
            "an initializer dict must map at least one glob pattern to an initializer"
        )
    # Collect every draw first, then make them all in ONE jitted program: drawing eagerly
    # compiles a separate XLA program per parameter shape, which dominated model build time.
    tasks: list[tuple[nnx.Variable, Callable[[Array], Array]]] = []
    for path, layer in layer_paths(model):
        scheme = get(_select(init, path, default_init))
        kernel = layer.kernel
        shape, dtype = kernel.get_value().shape, kernel.get_value().dtype
        is_conv = isinstance(layer, nnx.Conv)
        kernel_fn = scheme.conv if is_conv else scheme.linear
        tasks.append((kernel, functools.partial(_draw, kernel_fn, shape=shape, dtype=dtype)))
        if getattr(layer, "bias", None) is not None:
            bias_spec = _select(bias_init, path, None)
            if bias_spec is not None:
                bias_fn = get_bias(bias_spec)
            else:
                bias_fn = (scheme.conv_bias if is_conv else scheme.linear_bias) or _as_bias(
                    _constant(0.0)
                )
            b = layer.bias
            bshape, bdtype = b.get_value().shape, b.get_value().dtype
            tasks.append(
                (
                    b,
                    functools.partial(
                        _draw, bias_fn, shape=bshape, dtype=bdtype, fan_in=fans(shape)[0]
                    ),
                )
            )
    if not tasks:
        return model
    keys = [_fast_key(rngs.params()) for _ in tasks]
    values = jax.jit(lambda ks: [fn(k) for (_, fn), k in zip(tasks, ks)])(keys)
    for (var, _), value in zip(tasks, values):
        var.set_value(value)
    return model
