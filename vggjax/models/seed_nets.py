"""The networks of the reference cases ("seeds"), each faithful behind flags.

* :func:`wsdr` — the GAP-without-FC VGG-16 variant (seed 000): VGG-16 conv1–conv5 with no
  pool after conv5, ConvReLU(512→1024, 3×3), ConvReLU(1024→classes, 3×3) — a ReLU on the
  class scores — then global average pooling (= ``AvgPool2d(14)`` at 224×224). Optional
  BatchNorm with eps 1e-3 and PyTorch momentum 0, and the optional FC after the pooling.
* :func:`vgg16_fc_conv_400` — VGG-16 at 400×400 with fc6 as a 12×12 conv (seed 001),
  frozen features, 3 classes; reproduces the torchsummary counts of the seed.
* :class:`Net`, :class:`NetWidth`, :class:`NetDropout`, :class:`NetBatchNorm`,
  :class:`NetDepth`, :class:`NetRes`, :class:`NetResDeep` (+ :class:`ResBlock`) — the
  CIFAR-2 networks of *Deep Learning with PyTorch*, ch. 8 (seed 002), 32×32×3 in, 2 out.
* :class:`OverFeatSlim` — the 60×60, 3-class slim-OverFeat with 1×1-conv heads (seed 003),
  its three source bugs behind flags.
* :class:`TwoConvBN` — [conv 3→3 no bias, BN, ReLU] × 2, per-pixel logits (seed 004).

:data:`SEED_NETS` maps a short name to a :class:`SeedNet` (a builder plus the network's
natural input size); ``python -m vggjax.summary --list`` shows them.

Conventions as everywhere in vggjax: NHWC; ``model(x, return_features=True)`` returns
``(logits, feats)`` with every layer op recorded in order under a name that the summary
resolves to the module owning the weights (a module path joined by ``_``, e.g.
``block3_conv`` → ``block3/conv``; ``#k`` marks the k-th application of a shared module).
The book flattens NCHW activations in (c, h, w) order while these nets flatten NHWC in
(h, w, c) order: parameter counts and behaviour are the same, only ported fc1 weights
would need permuting (see ``vggjax.convert``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import initializers, layers
from vggjax.errors import ConfigError, ShapeError
from vggjax.freeze import freeze
from vggjax.models.vgg import VGG, scale_width
from vggjax.ops import Policy

Array = jax.Array

# VGG-16 (config D) without its last max pool: WSDR keeps conv5's 14×14 map at 224 input.
WSDR_CFG: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
]


def _rngs(rngs: nnx.Rngs | int) -> nnx.Rngs:
    return nnx.Rngs(rngs) if isinstance(rngs, int) else rngs


def _rec(feats: dict, name: str, x: Array) -> Array:
    feats[name] = x
    return x


def _output(logits: Array, feats: dict, return_features: bool):
    logits = logits.astype(jnp.float32)
    return (logits, feats) if return_features else logits


# --------------------------------------------------------------------------- seed 000


def wsdr(
    num_classes: int = 20,
    *,
    batch_norm: bool = False,
    fc: bool = False,
    score_relu: bool = True,
    width: float = 1.0,
    init: initializers.InitSpec = "torch_default",
    bias_init: initializers.InitSpec | None = None,
    in_channels: int = 3,
    dtype=None,
    param_dtype=jnp.float32,
    compute: Policy | str = "auto",
    rngs: nnx.Rngs | int = 0,
) -> VGG:
    """The WSDR network of seed 000 as a :class:`VGG` with a ``"gap"`` head.

    VGG-16 conv1–conv5 (no pool after conv5), then ConvReLU(512→1024·width, 3×3) and
    ConvReLU(1024→``num_classes``, 3×3) — ``score_relu=False`` drops the ReLU on the class
    scores (one fix) — then the spatial mean, which at 224×224 input is the original's
    ``AvgPool2d(14)`` over the 14×14 map; ``fc=True`` adds the Linear(classes→classes) that
    the author found fixes training. ``batch_norm=True`` puts BatchNorm(eps 1e-3, PyTorch
    momentum 0 = Flax momentum 1.0, so running statistics never move) after every conv,
    head convs included, as ``ConvReLU(bn=True)`` does. The default init is PyTorch's
    (the seed sets none). Input ``(N, H, W, 3)``, H, W ≥ 16; output ``(N, num_classes)``.
    """
    return VGG(
        list(WSDR_CFG),
        num_classes=num_classes,
        batch_norm=batch_norm,
        head="gap",
        head_options={
            "hidden": [scale_width(1024, width)],
            "kernel_size": 3,
            "score_act": "relu" if score_relu else None,
            "batch_norm": batch_norm,
            "fc": fc,
        },
        init=init,
        bias_init=bias_init,
        width=width,
        in_channels=in_channels,
        # PyTorch momentum=0 means running = 1·running + 0·batch: Flax momentum 1.0.
        norm_momentum=1.0,
        norm_eps=1e-3,
        dtype=dtype,
        param_dtype=param_dtype,
        compute=compute,
        rngs=rngs,
        name="wsdr_bn" if batch_norm else "wsdr",
    )


# --------------------------------------------------------------------------- seed 001


def vgg16_fc_conv_400(
    num_classes: int = 3,
    *,
    kernel_size: int = 12,
    freeze_features: bool = True,
    width: float = 1.0,
    dropout: float = 0.5,
    init: initializers.InitSpec = "torchvision",
    bias_init: initializers.InitSpec | None = None,
    in_channels: int = 3,
    dtype=None,
    param_dtype=jnp.float32,
    compute: Policy | str = "auto",
    rngs: nnx.Rngs | int = 0,
) -> VGG:
    """The 400×400 VGG-16 of seed 001: frozen VGG-16 features + fc6 as a 12×12 conv.

    400 → five 2×2 pools → a 12×12×512 map; fc6 is a ``kernel_size``² VALID conv to 4096
    (so the map becomes 1×1), then ReLU, Dropout, a 1×1 conv 4096, ReLU, Dropout, a 1×1
    conv to ``num_classes``, and the average pooling, which on a 1×1 map is a no-op. The
    original ends in a softmax; this returns the logits ``(N, num_classes)``. With
    ``freeze_features`` the 14,714,688 backbone weights are :class:`~vggjax.freeze.Frozen`
    (torchsummary's "Non-trainable params"). Input ``(N, H, W, 3)`` with H, W ≥ 32·kernel_size.
    """
    model = VGG(
        "D",
        num_classes=num_classes,
        head="fc_conv",
        head_options={"kernel_size": kernel_size},
        init=init,
        bias_init=bias_init,
        width=width,
        in_channels=in_channels,
        dropout=dropout,
        dtype=dtype,
        param_dtype=param_dtype,
        compute=compute,
        rngs=rngs,
        name="vgg16_fc_conv_400",
    )
    if freeze_features:
        freeze(model, "features/*")
    return model


# --------------------------------------------------------------------------- seed 002


def _flatten(x: Array, feats: dict, *, expected: int, name: str, why: str) -> Array:
    """Flatten NHWC ``x`` to ``(N, h·w·c)``; the fc1 width is fixed, so check it."""
    n = x.shape[1] * x.shape[2] * x.shape[3]
    if n != expected:
        raise ShapeError(
            f"{name} expects 32x32 inputs ({why} = {expected} features for fc1), got {n} features"
        )
    return _rec(feats, "flatten", x.reshape(x.shape[0], n))


def _kw(rngs: nnx.Rngs, dtype, param_dtype) -> dict[str, Any]:
    return dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _conv3(cin: int, cout: int, kw: dict, compute: Policy, *, use_bias: bool = True) -> nnx.Conv:
    """The book's ``nn.Conv2d(cin, cout, kernel_size=3, padding=1)``."""
    return layers.conv(cin, cout, 3, padding=1, use_bias=use_bias, compute=compute, **kw)


def _bn(c: int, kw: dict) -> nnx.BatchNorm:
    # PyTorch BatchNorm2d defaults: momentum 0.1 (Flax 0.9), eps 1e-5.
    return layers.batch_norm(c, momentum=0.9, epsilon=1e-5, **kw)


class _BookNet(nnx.Module):
    """Shared plumbing of the CIFAR-2 nets: init with PyTorch's default, input check."""

    def _finish(self, init, bias_init, rngs: nnx.Rngs) -> None:
        initializers.apply(self, init, bias_init, rngs=rngs, default_init="torch_default")

    def _check(self, x: Array) -> None:
        layers.check_input(x, channels=3, min_size=1, name=type(self).__name__, why="")


class Net(_BookNet):
    """The book's first CIFAR-2 convnet: 18,090 parameters.

    conv1 3→16 (3×3, pad 1) → tanh → maxpool 2 → conv2 16→8 → tanh → maxpool 2 →
    flatten (8·8·8 = 512) → fc1 512→32 → tanh → fc2 32→``num_classes``. Per-tensor sizes in
    PyTorch order: 432, 16, 1152, 8, 16384, 32, 64, 2. Input ``(N, 32, 32, 3)``;
    output ``(N, num_classes)``. ``init`` defaults to PyTorch's own default.
    """

    def __init__(
        self,
        num_classes: int = 2,
        *,
        init: initializers.InitSpec = "torch_default",
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        rngs = _rngs(rngs)
        kw = _kw(rngs, dtype, param_dtype)
        self.compute = Policy.parse(compute)
        self.conv1 = _conv3(3, 16, kw, self.compute)
        self.conv2 = _conv3(16, 8, kw, self.compute)
        self.fc1 = layers.linear(8 * 8 * 8, 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        self._finish(init, bias_init, rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "tanh1", jnp.tanh(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        x = _rec(f, "conv2", self.conv2(x))
        x = _rec(f, "tanh2", jnp.tanh(x))
        x = _rec(f, "pool2", layers.max_pool(x, compute=self.compute))
        x = _flatten(x, f, expected=8 * 8 * 8, name="Net", why="8*8*8")
        x = _rec(f, "fc1", self.fc1(x))
        x = _rec(f, "tanh3", jnp.tanh(x))
        x = _rec(f, "fc2", self.fc2(x))
        return _output(x, f, return_features)


class NetWidth(_BookNet):
    """:class:`Net` widened: conv1 3→``n_chans1``, conv2 ``n_chans1``→``n_chans1//2``, fc1 8·8·(n_chans1//2)→32.

    tanh activations and 2×2 max pools as in :class:`Net`. Input ``(N, 32, 32, 3)``;
    output ``(N, num_classes)``.
    """

    def __init__(
        self,
        n_chans1: int = 32,
        num_classes: int = 2,
        *,
        init: initializers.InitSpec = "torch_default",
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        rngs = _rngs(rngs)
        kw = _kw(rngs, dtype, param_dtype)
        self.compute = Policy.parse(compute)
        self.n_chans1 = n_chans1
        self.conv1 = _conv3(3, n_chans1, kw, self.compute)
        self.conv2 = _conv3(n_chans1, n_chans1 // 2, kw, self.compute)
        self.fc1 = layers.linear(8 * 8 * (n_chans1 // 2), 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        self._finish(init, bias_init, rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "tanh1", jnp.tanh(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        x = _rec(f, "conv2", self.conv2(x))
        x = _rec(f, "tanh2", jnp.tanh(x))
        x = _rec(f, "pool2", layers.max_pool(x, compute=self.compute))
        x = _flatten(
            x, f, expected=8 * 8 * (self.n_chans1 // 2), name="NetWidth", why="8*8*(n_chans1//2)"
        )
        x = _rec(f, "fc1", self.fc1(x))
        x = _rec(f, "tanh3", jnp.tanh(x))
        x = _rec(f, "fc2", self.fc2(x))
        return _output(x, f, return_features)


class NetDropout(_BookNet):
    """:class:`NetWidth` with ``Dropout2d(p)`` after each conv block's pooling.

    ``Dropout2d`` zeroes whole channels: here ``nnx.Dropout`` with the mask broadcast over
    H and W (axes 1, 2 of NHWC). Active in ``model.train()`` mode (needs the ``dropout``
    rng stream, taken from ``rngs``), off in ``model.eval()``. Input ``(N, 32, 32, 3)``;
    output ``(N, num_classes)``.
    """

    def __init__(
        self,
        n_chans1: int = 32,
        p: float = 0.4,
        num_classes: int = 2,
        *,
        init: initializers.InitSpec = "torch_default",
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        if not 0 <= p < 1:
            raise ConfigError(f"dropout p must be in [0, 1), got {p!r}")
        rngs = _rngs(rngs)
        kw = _kw(rngs, dtype, param_dtype)
        self.compute = Policy.parse(compute)
        self.n_chans1 = n_chans1
        self.conv1 = _conv3(3, n_chans1, kw, self.compute)
        self.conv1_dropout = nnx.Dropout(p, broadcast_dims=(1, 2), rngs=rngs)
        self.conv2 = _conv3(n_chans1, n_chans1 // 2, kw, self.compute)
        self.conv2_dropout = nnx.Dropout(p, broadcast_dims=(1, 2), rngs=rngs)
        self.fc1 = layers.linear(8 * 8 * (n_chans1 // 2), 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        self._finish(init, bias_init, rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "tanh1", jnp.tanh(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        x = _rec(f, "conv1_dropout", self.conv1_dropout(x))
        x = _rec(f, "conv2", self.conv2(x))
        x = _rec(f, "tanh2", jnp.tanh(x))
        x = _rec(f, "pool2", layers.max_pool(x, compute=self.compute))
        x = _rec(f, "conv2_dropout", self.conv2_dropout(x))
        x = _flatten(
            x, f, expected=8 * 8 * (self.n_chans1 // 2), name="NetDropout", why="8*8*(n_chans1//2)"
        )
        x = _rec(f, "fc1", self.fc1(x))
        x = _rec(f, "tanh3", jnp.tanh(x))
        x = _rec(f, "fc2", self.fc2(x))
        return _output(x, f, return_features)


class NetBatchNorm(_BookNet):
    """:class:`NetWidth` with BatchNorm between each conv and its tanh (the book's code order).

    BatchNorm has PyTorch's defaults (momentum 0.1 → Flax 0.9, eps 1e-5); training mode
    normalises with batch statistics. (The book's forward calls ``self.conv_batchnorm``, a
    typo for ``conv2_batchnorm``, which is used here.) Input ``(N, 32, 32, 3)``; output
    ``(N, num_classes)``.
    """

    def __init__(
        self,
        n_chans1: int = 32,
        num_classes: int = 2,
        *,
        init: initializers.InitSpec = "torch_default",
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        rngs = _rngs(rngs)
        kw = _kw(rngs, dtype, param_dtype)
        self.compute = Policy.parse(compute)
        self.n_chans1 = n_chans1
        self.conv1 = _conv3(3, n_chans1, kw, self.compute)
        self.conv1_batchnorm = _bn(n_chans1, kw)
        self.conv2 = _conv3(n_chans1, n_chans1 // 2, kw, self.compute)
        self.conv2_batchnorm = _bn(n_chans1 // 2, kw)
        self.fc1 = layers.linear(8 * 8 * (n_chans1 // 2), 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        self._finish(init, bias_init, rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "conv1_batchnorm", self.conv1_batchnorm(x))
        x = _rec(f, "tanh1", jnp.tanh(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        x = _rec(f, "conv2", self.conv2(x))
        x = _rec(f, "conv2_batchnorm", self.conv2_batchnorm(x))
        x = _rec(f, "tanh2", jnp.tanh(x))
        x = _rec(f, "pool2", layers.max_pool(x, compute=self.compute))
        x = _flatten(
            x,
            f,
            expected=8 * 8 * (self.n_chans1 // 2),
            name="NetBatchNorm",
            why="8*8*(n_chans1//2)",
        )
        x = _rec(f, "fc1", self.fc1(x))
        x = _rec(f, "tanh3", jnp.tanh(x))
        x = _rec(f, "fc2", self.fc2(x))
        return _output(x, f, return_features)


class NetDepth(_BookNet):
    """Three conv blocks with ReLU: conv 3→n, n→n/2, n/2→n/2, each ReLU + 2×2 max pool, then fc 4·4·(n/2)→32→classes.

    Input ``(N, 32, 32, 3)``; output ``(N, num_classes)``.
    """

    residual = False

    def __init__(
        self,
        n_chans1: int = 32,
        num_classes: int = 2,
        *,
        init: initializers.InitSpec = "torch_default",
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        rngs = _rngs(rngs)
        kw = _kw(rngs, dtype, param_dtype)
        self.compute = Policy.parse(compute)
        self.n_chans1 = n_chans1
        half = n_chans1 // 2
        self.conv1 = _conv3(3, n_chans1, kw, self.compute)
        self.conv2 = _conv3(n_chans1, half, kw, self.compute)
        self.conv3 = _conv3(half, half, kw, self.compute)
        self.fc1 = layers.linear(4 * 4 * half, 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        self._finish(init, bias_init, rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "relu1", jax.nn.relu(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        x = _rec(f, "conv2", self.conv2(x))
        x = _rec(f, "relu2", jax.nn.relu(x))
        x = _rec(f, "pool2", layers.max_pool(x, compute=self.compute))
        skip = x
        x = _rec(f, "conv3", self.conv3(x))
        x = _rec(f, "relu3", jax.nn.relu(x))
        if self.residual:
            # The book's NetRes: relu(conv3(out)) + out1, where out1 is block 2's pooled output.
            x = _rec(f, "skip_add", x + skip)
        x = _rec(f, "pool3", layers.max_pool(x, compute=self.compute))
        name = type(self).__name__
        x = _flatten(
            x, f, expected=4 * 4 * (self.n_chans1 // 2), name=name, why="4*4*(n_chans1//2)"
        )
        x = _rec(f, "fc1", self.fc1(x))
        x = _rec(f, "relu4", jax.nn.relu(x))
        x = _rec(f, "fc2", self.fc2(x))
        return _output(x, f, return_features)


class NetRes(NetDepth):
    """:class:`NetDepth` with the book's skip connection: ``pool(relu(conv3(out)) + out1)``.

    ``out1`` is the output of the second conv block (after its pooling), i.e. the input of
    conv3, so the add is an identity shortcut around conv3 + ReLU. Same parameters as
    :class:`NetDepth`. Input ``(N, 32, 32, 3)``; output ``(N, num_classes)``.
    """

    residual = True


class ResBlock(nnx.Module):
    """The book's residual block: conv3×3 (no bias) → BatchNorm → ReLU, plus the input.

    The conv is kaiming-normal for ReLU (fan_in, ``torch.nn.init.kaiming_normal_``'s
    default mode) — applied by the owning network's init (see :class:`NetResDeep`); the
    BatchNorm starts at weight 0.5, bias 0 "to produce output distributions that initially
    have 0 mean and 0.5 variance". ``residual=False`` drops the ``+ x`` (the seed's notes
    print the forward without it). Shapes ``(N, H, W, n_chans) -> (N, H, W, n_chans)``.
    """

    def __init__(
        self,
        n_chans: int,
        *,
        residual: bool = True,
        norm_momentum: float = 0.9,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.residual = residual
        self.conv = layers.conv(
            n_chans, n_chans, 3, padding=1, use_bias=False, compute=compute, **kw
        )
        self.batch_norm = layers.batch_norm(n_chans, momentum=norm_momentum, epsilon=1e-5, **kw)
        self.batch_norm.scale.set_value(jnp.full_like(self.batch_norm.scale.get_value(), 0.5))

    def __call__(
        self, x: Array, feats: dict | None = None, prefix: str = "block", suffix: str = ""
    ) -> Array:
        f = collections.OrderedDict() if feats is None else feats
        out = _rec(f, f"{prefix}_conv{suffix}", self.conv(x))
        out = _rec(f, f"{prefix}_batch_norm{suffix}", self.batch_norm(out))
        out = _rec(f, f"{prefix}_relu{suffix}", jax.nn.relu(out))
        if self.residual:
            out = _rec(f, f"{prefix}_add{suffix}", out + x)
        return out


def _with_own_init(init: initializers.InitSpec, own: Mapping[str, Any]) -> dict[str, Any]:
    """``init`` as a {glob: spec} dict in which ``own`` (a layer's own init) comes first.

    A user dict keeps its patterns; a key it shares with ``own`` keeps the user's value.
    """
    user = dict(init) if isinstance(init, Mapping) else {"*": init}
    return {**dict(own), **user}


class NetResDeep(_BookNet):
    """conv 3→n → ReLU → pool, ``n_blocks`` :class:`ResBlock` (n channels), pool, fc 8·8·n→32 → ReLU → fc.

    The book builds the blocks with ``nn.Sequential(*(n_blocks * [ResBlock(...)]))``: the
    list repeats ONE module, so all blocks share one set of weights. ``shared_block=True``
    reproduces that (one block applied ``n_blocks`` times; its rows in the summary are
    ``block_conv#1`` … ``block_conv#n``); the default builds ``n_blocks`` independent blocks
    ``block1`` … ``blockN``. ResBlock convs get kaiming_normal(fan_in, relu) whatever
    ``init`` says unless ``init`` is a dict naming ``"block*/conv"``. Input
    ``(N, 32, 32, 3)``; output ``(N, num_classes)``.
    """

    def __init__(
        self,
        n_chans1: int = 32,
        n_blocks: int = 10,
        num_classes: int = 2,
        *,
        shared_block: bool = False,
        residual: bool = True,
        init: initializers.InitSpec = "torch_default",
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        if n_blocks < 0:
            raise ConfigError(f"n_blocks must be >= 0, got {n_blocks!r}")
        rngs = _rngs(rngs)
        kw = _kw(rngs, dtype, param_dtype)
        self.compute = Policy.parse(compute)
        self.n_chans1 = n_chans1
        self.n_blocks = n_blocks
        self.shared_block = shared_block
        self.conv1 = _conv3(3, n_chans1, kw, self.compute)
        bkw = dict(
            residual=residual, dtype=dtype, param_dtype=param_dtype, compute=self.compute, rngs=rngs
        )
        if shared_block:
            self.block = ResBlock(n_chans1, **bkw)
        else:
            for i in range(1, n_blocks + 1):
                setattr(self, f"block{i}", ResBlock(n_chans1, **bkw))
        self.fc1 = layers.linear(8 * 8 * n_chans1, 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        self._finish(_with_own_init(init, {"block*/conv": "he_normal(fan_in)"}), bias_init, rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "relu1", jax.nn.relu(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        for i in range(1, self.n_blocks + 1):
            if self.shared_block:
                x = self.block(x, f, "block", f"#{i}")
            else:
                x = getattr(self, f"block{i}")(x, f, f"block{i}")
        x = _rec(f, "pool2", layers.max_pool(x, compute=self.compute))
        x = _flatten(x, f, expected=8 * 8 * self.n_chans1, name="NetResDeep", why="8*8*n_chans1")
        x = _rec(f, "fc1", self.fc1(x))
        x = _rec(f, "relu2", jax.nn.relu(x))
        x = _rec(f, "fc2", self.fc2(x))
        return _output(x, f, return_features)


# --------------------------------------------------------------------------- seed 003

# slim.conv2d's default weights are Xavier (Glorot uniform) with the arg_scope's zero bias;
# the fc6/fc7 scope overrides both, and fc9 sits inside that scope too (so it keeps the
# trunc_normal(0.005) weights) but resets its bias to zero.
OVERFEAT_INIT: dict[str, str] = {
    "fc6": "trunc_normal(0.005)",
    "fc7*": "trunc_normal(0.005)",
    "fc9": "trunc_normal(0.005)",
    "*": "xavier_uniform",
}
OVERFEAT_BIAS_INIT: dict[str, str] = {"fc6": "constant(0.1)", "fc7*": "constant(0.1)", "*": "zeros"}


class OverFeatSlim(nnx.Module):
    """The slim-OverFeat of seed 003 (60×60×3 in, 3 classes), source bugs behind flags.

    conv11 64 (3×3 VALID) → conv12 128 (3×3 VALID) → pool1 → conv2 128 (VALID) → pool2 →
    conv3/4/5 256 (SAME) → pool5 (all pools 2×2 VALID, all convs ReLU) → fc6 512 (3×3
    VALID conv) → ReLU → dropout6 → fc7 1024 (1×1) → ReLU → [``extra_1x1`` more 1×1 convs
    ``fc7_1``… — one makes the loss stick near ln 3] → average pool over the whole map →
    fc9 ``num_classes`` (1×1, linear) → squeeze. At 60×60 fc6 sees a 6×6 map, so fc7 is 4×4.

    Flags reproducing the source (defaults are the corrected network):
      conv12_reads_input: conv12 is applied to the input image, so conv11 is computed and
        discarded (its gradient is exactly zero) and conv12 has 3 input channels.
      pool_in_train_only: the average pool runs only in training mode; in ``model.eval()``
        mode the output is the un-pooled ``(N, h, w, num_classes)`` score map.
      dropout_on_logits: dropout (same rate) applied to the logits in training mode.
    ``batch_norm=True`` (a fix, off in the source) puts a BatchNorm between every conv but
    fc9 and its ReLU, with the parameters the source's ``inference()`` defines but never
    passes to its arg_scope (decay 0.995 = Flax momentum 0.995, epsilon 1e-3); those convs
    then have no bias, as slim drops the bias when a ``normalizer_fn`` is set.
    ``dropout`` is the drop rate (1 − keep_prob). Init: :data:`OVERFEAT_INIT` /
    :data:`OVERFEAT_BIAS_INIT` (override with ``init``/``bias_init``). Weight decay 5e-4
    belongs to the optimizer. Output ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 3,
        *,
        extra_1x1: int = 0,
        conv12_reads_input: bool = False,
        pool_in_train_only: bool = False,
        dropout_on_logits: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.5,
        width: float = 1.0,
        in_channels: int = 3,
        init: initializers.InitSpec | None = None,
        bias_init: initializers.InitSpec | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        if extra_1x1 < 0:
            raise ConfigError(f"extra_1x1 must be >= 0, got {extra_1x1!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        rngs = _rngs(rngs)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c = functools.partial(scale_width, width=width)
        self.compute = Policy.parse(compute)
        self.in_channels = in_channels
        self.conv12_reads_input = conv12_reads_input
        self.pool_in_train_only = pool_in_train_only
        self.extra_1x1 = extra_1x1
        self.batch_norm = batch_norm
        # Set by model.train() / model.eval() (nnx.Module.set_attributes), like Dropout's.
        self.deterministic = False
        conv = functools.partial(layers.conv, use_bias=not batch_norm, compute=self.compute, **kw)
        self.conv11 = conv(in_channels, c(64), 3, padding="VALID")
        self.conv12 = conv(in_channels if conv12_reads_input else c(64), c(128), 3, padding="VALID")
        self.conv2 = conv(c(128), c(128), 3, padding="VALID")
        self.conv3 = conv(c(128), c(256), 3, padding="SAME")
        self.conv4 = conv(c(256), c(256), 3, padding="SAME")
        self.conv5 = conv(c(256), c(256), 3, padding="SAME")
        self.fc6 = conv(c(256), c(512), 3, padding="VALID")
        self.dropout6 = nnx.Dropout(dropout, rngs=rngs)
        self.fc7 = conv(c(512), c(1024), 1, padding="SAME")
        for i in range(1, extra_1x1 + 1):
            setattr(self, f"fc7_{i}", conv(c(1024), c(1024), 1, padding="SAME"))
        if batch_norm:
            for name in self._normed_layers():
                out = getattr(self, name).out_features
                setattr(
                    self, f"{name}_bn", layers.batch_norm(out, momentum=0.995, epsilon=1e-3, **kw)
                )
        self.fc9 = layers.conv(c(1024), num_classes, 1, padding="SAME", compute=self.compute, **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout_on_logits else None
        initializers.apply(
            self,
            OVERFEAT_INIT if init is None else init,
            OVERFEAT_BIAS_INIT if bias_init is None else bias_init,
            rngs=rngs,
            default_init="xavier_uniform",
        )

    def _normed_layers(self) -> list[str]:
        return ["conv11", "conv12", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"] + [
            f"fc7_{i}" for i in range(1, self.extra_1x1 + 1)
        ]

    def _conv(self, name: str, x: Array, f: dict) -> Array:
        """conv ``name`` (+ its BatchNorm when ``batch_norm``), before the ReLU."""
        x = _rec(f, name, getattr(self, name)(x))
        if self.batch_norm:
            x = _rec(f, f"{name}_bn", getattr(self, f"{name}_bn")(x))
        return x

    def _fc6_input_size(self, s: int) -> int:
        s = s - 2 if self.conv12_reads_input else s - 4  # conv11 (+ conv12) VALID
        s = (s // 2 - 2) // 2  # pool1, conv2 VALID, pool2
        return s // 2  # conv3-5 SAME, pool5

    @property
    def min_input_size(self) -> int:
        """Smallest H (= W) for which fc6's 3×3 VALID window fits."""
        s = 1
        while self._fc6_input_size(s) < 3:
            s += 1
        return s

    def __call__(self, x: Array, *, return_features: bool = False):
        layers.check_input(
            x,
            channels=self.in_channels,
            min_size=self.min_input_size,
            name="OverFeatSlim",
            why="three VALID 3x3 convs, three 2x2 pools, then fc6's 3x3 window",
        )
        f: dict[str, Array] = collections.OrderedDict()
        image = x
        x = self._conv("conv11", x, f)
        x = _rec(f, "relu11", jax.nn.relu(x))
        # The source bug: `net = slim.conv2d(inputs, ...)` for conv12 discards conv11.
        x = self._conv("conv12", image if self.conv12_reads_input else x, f)
        x = _rec(f, "relu12", jax.nn.relu(x))
        x = _rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        for name in ("conv2", "pool2", "conv3", "conv4", "conv5", "pool5"):
            if name.startswith("pool"):
                x = _rec(f, name, layers.max_pool(x, compute=self.compute))
            else:
                x = self._conv(name, x, f)
                x = _rec(f, "relu" + name[4:], jax.nn.relu(x))
        x = self._conv("fc6", x, f)
        x = _rec(f, "relu6", jax.nn.relu(x))
        x = _rec(f, "dropout6", self.dropout6(x))
        x = self._conv("fc7", x, f)
        x = _rec(f, "relu7", jax.nn.relu(x))
        for i in range(1, self.extra_1x1 + 1):
            x = self._conv(f"fc7_{i}", x, f)
            x = _rec(f, f"relu7_{i}", jax.nn.relu(x))
        pooled = not (self.pool_in_train_only and self.deterministic)
        if pooled:
            x = _rec(f, "avgpool", jnp.mean(x, axis=(1, 2), keepdims=True))
        x = _rec(f, "fc9", self.fc9(x))
        if self.dropout is not None:
            x = _rec(f, "dropout", self.dropout(x))
        logits = x[:, 0, 0, :] if pooled else x  # spatial_squeeze
        return _output(logits, f, return_features)


# --------------------------------------------------------------------------- seed 004


class TwoConvBN(nnx.Module):
    """The zero-init study of seed 004: [conv 3×3 pad 1 no bias → BatchNorm → ReLU] × 2.

    ``(N, H, W, C) -> (N, H, W, C)`` per-pixel logits (C = ``num_classes`` = 3; the loss
    is a cross-entropy over the channel axis). ``init`` applies to both convs, as the
    seed's ``for m in self.modules()`` loops do: ``"zeros"``, ``"constant(5)"``,
    ``"he_normal(fan_in)"`` (= ``kaiming_normal_(mode="fan_in", nonlinearity="relu")``,
    the default). ``only_conv2=True`` is the seed's "zero init and only one conv layer"
    run: the forward is just ``conv2(x)`` (conv1, both BNs and the ReLUs commented out),
    so conv2 sees the non-zero image and learns even from zero weights. BatchNorm has
    PyTorch's defaults (momentum 0.1 → Flax 0.9, eps 1e-5) and uses batch statistics in
    training mode.
    """

    def __init__(
        self,
        num_classes: int = 3,
        *,
        init: initializers.InitSpec = "he_normal(fan_in)",
        only_conv2: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        compute: Policy | str = "auto",
        rngs: nnx.Rngs | int = 0,
    ):
        rngs = _rngs(rngs)
        kw = dict(dtype=dtype, param_dtype=param_dtype, compute=Policy.parse(compute), rngs=rngs)
        nkw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c = num_classes
        self.only_conv2 = only_conv2
        self.num_classes = num_classes
        self.in_channels = num_classes
        self.conv1 = layers.conv(c, c, 3, padding=1, use_bias=False, **kw)
        self.bn1 = layers.batch_norm(c, momentum=0.9, epsilon=1e-5, **nkw)
        self.conv2 = layers.conv(c, c, 3, padding=1, use_bias=False, **kw)
        self.bn2 = layers.batch_norm(c, momentum=0.9, epsilon=1e-5, **nkw)
        initializers.apply(self, init, None, rngs=rngs)

    def __call__(self, x: Array, *, return_features: bool = False):
        layers.check_input(x, channels=self.in_channels, min_size=1, name="TwoConvBN", why="")
        f: dict[str, Array] = collections.OrderedDict()
        if self.only_conv2:
            x = _rec(f, "conv2", self.conv2(x))
            return _output(x, f, return_features)
        x = _rec(f, "conv1", self.conv1(x))
        x = _rec(f, "bn1", self.bn1(x))
        x = _rec(f, "relu1", jax.nn.relu(x))
        x = _rec(f, "conv2", self.conv2(x))
        x = _rec(f, "bn2", self.bn2(x))
        x = _rec(f, "relu2", jax.nn.relu(x))
        return _output(x, f, return_features)


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class SeedNet:
    """A reference-case network: ``build(**options)`` and its natural NHWC input size."""

    build: Callable[..., nnx.Module]
    input_size: int
    description: str

    def __call__(self, **kwargs) -> nnx.Module:
        return self.build(**kwargs)


SEED_NETS: dict[str, SeedNet] = {
    "wsdr": SeedNet(wsdr, 224, "seed 000: VGG-16 conv1-5 + ReLU'd GAP scores, no FC"),
    "wsdr_bn": SeedNet(
        functools.partial(wsdr, batch_norm=True), 224, "seed 000 with BN (eps 1e-3, momentum 0)"
    ),
    "vgg16_fc_conv_400": SeedNet(
        vgg16_fc_conv_400, 400, "seed 001: frozen VGG-16, fc6 as a 12x12 conv, 3 classes"
    ),
    "net": SeedNet(Net, 32, "seed 002: CIFAR-2 Net (18,090 params)"),
    "net_width": SeedNet(NetWidth, 32, "seed 002: NetWidth"),
    "net_dropout": SeedNet(NetDropout, 32, "seed 002: NetDropout (Dropout2d 0.4)"),
    "net_batchnorm": SeedNet(NetBatchNorm, 32, "seed 002: NetBatchNorm"),
    "net_depth": SeedNet(NetDepth, 32, "seed 002: NetDepth"),
    "net_res": SeedNet(NetRes, 32, "seed 002: NetRes"),
    "net_res_deep": SeedNet(NetResDeep, 32, "seed 002: NetResDeep (10 ResBlocks)"),
    "overfeat_slim": SeedNet(
        OverFeatSlim, 60, "seed 003: slim OverFeat, 1x1 heads, 60x60, 3 classes"
    ),
    "two_conv_bn": SeedNet(TwoConvBN, 224, "seed 004: [conv, BN, ReLU] x 2, per-pixel logits"),
}
