"""Reference case 002: the CIFAR-2 networks of *Deep Learning with PyTorch*, ch. 8 (32×32×3 in,
2 out).

:class:`Net`, :class:`NetWidth`, :class:`NetDropout`, :class:`NetBatchNorm` (two tanh conv
blocks), :class:`NetDepth`, :class:`NetRes` (three ReLU conv blocks) and :class:`NetResDeep`
(+ :class:`ResBlock`). Initialised with PyTorch's own defaults unless ``init`` says otherwise.
The book flattens NCHW activations in (c, h, w) order while these nets flatten NHWC in
(h, w, c) order: parameter counts and behaviour are the same, only ported fc1 weights would
need permuting (see ``vggjax.convert``).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import initializers, layers
from vggjax.errors import check_count, check_rate
from vggjax.models.options import LAYER, NET, REQUIRED, layer_kw, takes
from vggjax.models.reference.common import batch_norm, conv3, flatten, output, rec

Array = jax.Array


class _BookNet(nnx.Module):
    """Shared plumbing of the CIFAR-2 nets: layer options, PyTorch's default init, input check,
    and the two halves every one of them has (conv blocks, then fc1 → act → fc2).

    ``__init__`` is the ``(n_chans1, num_classes)`` constructor of :class:`NetWidth`,
    :class:`NetBatchNorm`, :class:`NetDepth` and :class:`NetRes`; the nets with other
    positional options spell out their own signature (it is what the docs, ``help()`` and the
    model registry show) and pass it on to :meth:`_build`. Every net takes the network
    options of :mod:`vggjax.models.options` with PyTorch's default init.
    """

    @takes(NET, init="torch_default")
    def __init__(self, n_chans1: int = 32, num_classes: int = 2, **options):
        self._build(n_chans1, num_classes, options)

    def _build(self, n_chans1: int, num_classes: int, options: dict[str, Any], **arch) -> None:
        """The conv blocks (:meth:`_blocks`, given the net's own ``arch`` options), fc1 and fc2,
        then the initialisation."""
        kw = layer_kw(options)
        rngs = kw["rngs"]
        self.compute = options["compute"]
        self.n_chans1 = n_chans1
        flat = self._blocks(kw, rngs, **arch)
        self.fc1 = layers.linear(flat, 32, **kw)
        self.fc2 = layers.linear(32, num_classes, **kw)
        init, bias_init = options["init"], options["bias_init"]
        initializers.apply(self, init, bias_init, rngs=rngs, default_init="torch_default")

    def _blocks(self, kw: dict[str, Any], rngs: nnx.Rngs, **arch) -> int:
        """Create the conv blocks; return the width of their flattened output (fc1's input)."""
        raise NotImplementedError

    def _check(self, x: Array) -> None:
        layers.check_input(x, channels=3, min_size=1, name=type(self).__name__, why="")

    def _pool(self, f: dict, name: str, x: Array) -> Array:
        return rec(f, name, layers.max_pool(x, compute=self.compute))

    def _fc(self, f: dict, x: Array, act: Callable, act_name: str, *, why: str) -> Array:
        """flatten → fc1 → act → fc2 (the classifier of every book net)."""
        expected = self.fc1.in_features
        x = flatten(x, f, expected=expected, name=type(self).__name__, why=why)
        x = rec(f, "fc1", self.fc1(x))
        x = rec(f, act_name, act(x))
        return rec(f, "fc2", self.fc2(x))


class _TwoTanhBlocks(_BookNet):
    """conv1 → [BN] → tanh → pool → [Dropout2d] → conv2 → [BN] → tanh → pool → [Dropout2d] → fc1
    → tanh → fc2."""

    batch_norm_layers = False

    def _blocks(self, kw, rngs, *, dropout: float | None = None, why: str = "8*8*(n_chans1//2)"):
        self.why = why
        chans = (3, self.n_chans1, self.n_chans1 // 2)
        for i in (1, 2):
            setattr(self, f"conv{i}", conv3(chans[i - 1], chans[i], kw, self.compute))
            if self.batch_norm_layers:
                setattr(self, f"conv{i}_batchnorm", batch_norm(chans[i], kw))
            if dropout is not None:
                # Dropout2d zeroes whole channels: the mask is broadcast over H and W.
                setattr(
                    self, f"conv{i}_dropout", nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)
                )
        return 8 * 8 * chans[2]

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        for i in (1, 2):
            x = rec(f, f"conv{i}", getattr(self, f"conv{i}")(x))
            if hasattr(self, f"conv{i}_batchnorm"):
                x = rec(f, f"conv{i}_batchnorm", getattr(self, f"conv{i}_batchnorm")(x))
            x = rec(f, f"tanh{i}", jnp.tanh(x))
            x = self._pool(f, f"pool{i}", x)
            if hasattr(self, f"conv{i}_dropout"):
                x = rec(f, f"conv{i}_dropout", getattr(self, f"conv{i}_dropout")(x))
        x = self._fc(f, x, jnp.tanh, "tanh3", why=self.why)
        return output(x, f, return_features)


class Net(_TwoTanhBlocks):
    """The book's first CIFAR-2 convnet: 18,090 parameters.

    conv1 3→16 (3×3, pad 1) → tanh → maxpool 2 → conv2 16→8 → tanh → maxpool 2 →
    flatten (8·8·8 = 512) → fc1 512→32 → tanh → fc2 32→``num_classes``. Per-tensor sizes in
    PyTorch order: 432, 16, 1152, 8, 16384, 32, 64, 2. Input ``(N, 32, 32, 3)``;
    output ``(N, num_classes)``. ``init`` defaults to PyTorch's own default.
    """

    @takes(NET, init="torch_default")
    def __init__(self, num_classes: int = 2, **options):
        self._build(16, num_classes, options, why="8*8*8")


class NetWidth(_TwoTanhBlocks):
    """:class:`Net` widened: conv1 3→``n_chans1``, conv2 ``n_chans1``→``n_chans1//2``, fc1
    8·8·(n_chans1//2)→32.

    tanh activations and 2×2 max pools as in :class:`Net`. Input ``(N, 32, 32, 3)``;
    output ``(N, num_classes)``.
    """


class NetDropout(_TwoTanhBlocks):
    """:class:`NetWidth` with ``Dropout2d(p)`` after each conv block's pooling.

    ``Dropout2d`` zeroes whole channels: here ``nnx.Dropout`` with the mask broadcast over
    H and W (axes 1, 2 of NHWC). Active in ``model.train()`` mode (needs the ``dropout``
    rng stream, taken from ``rngs``), off in ``model.eval()``. Input ``(N, 32, 32, 3)``;
    output ``(N, num_classes)``.
    """

    @takes(NET, init="torch_default")
    def __init__(self, n_chans1: int = 32, p: float = 0.4, num_classes: int = 2, **options):
        check_rate("dropout p", p)
        self._build(n_chans1, num_classes, options, dropout=p)


class NetBatchNorm(_TwoTanhBlocks):
    """:class:`NetWidth` with BatchNorm between each conv and its tanh (the book's code order).

    BatchNorm has PyTorch's defaults (momentum 0.1 → Flax 0.9, eps 1e-5); training mode
    normalises with batch statistics. (The book's forward calls ``self.conv_batchnorm``, a
    typo for ``conv2_batchnorm``, which is used here.) Input ``(N, 32, 32, 3)``; output
    ``(N, num_classes)``.
    """

    batch_norm_layers = True


class NetDepth(_BookNet):
    """Three conv blocks with ReLU: conv 3→n, n→n/2, n/2→n/2, each ReLU + 2×2 max pool, then fc
    4·4·(n/2)→32→classes.

    Input ``(N, 32, 32, 3)``; output ``(N, num_classes)``.
    """

    residual = False

    def _blocks(self, kw, rngs):
        half = self.n_chans1 // 2
        self.conv1 = conv3(3, self.n_chans1, kw, self.compute)
        self.conv2 = conv3(self.n_chans1, half, kw, self.compute)
        self.conv3 = conv3(half, half, kw, self.compute)
        return 4 * 4 * half

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        for i in (1, 2, 3):
            skip = x
            x = rec(f, f"conv{i}", getattr(self, f"conv{i}")(x))
            x = rec(f, f"relu{i}", jax.nn.relu(x))
            if i == 3 and self.residual:
                # The book's NetRes: relu(conv3(out)) + out1, where out1 is block 2's pooled output.
                x = rec(f, "skip_add", x + skip)
            x = self._pool(f, f"pool{i}", x)
        x = self._fc(f, x, jax.nn.relu, "relu4", why="4*4*(n_chans1//2)")
        return output(x, f, return_features)


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

    @takes(LAYER, rngs=REQUIRED)
    def __init__(
        self, n_chans: int, *, residual: bool = True, norm_momentum: float = 0.9, **options
    ):
        kw = layer_kw(options)
        self.residual = residual
        self.conv = conv3(n_chans, n_chans, kw, options["compute"], use_bias=False)
        self.batch_norm = layers.batch_norm(n_chans, momentum=norm_momentum, epsilon=1e-5, **kw)
        self.batch_norm.scale.set_value(jnp.full_like(self.batch_norm.scale.get_value(), 0.5))

    def __call__(
        self, x: Array, feats: dict | None = None, prefix: str = "block", suffix: str = ""
    ) -> Array:
        f = collections.OrderedDict() if feats is None else feats
        out = rec(f, f"{prefix}_conv{suffix}", self.conv(x))
        out = rec(f, f"{prefix}_batch_norm{suffix}", self.batch_norm(out))
        out = rec(f, f"{prefix}_relu{suffix}", jax.nn.relu(out))
        if self.residual:
            out = rec(f, f"{prefix}_add{suffix}", out + x)
        return out


def _with_own_init(init: initializers.InitSpec, own: Mapping[str, Any]) -> dict[str, Any]:
    """``init`` as a {glob: spec} dict in which ``own`` (a layer's own init) comes first.

    A user dict keeps its patterns; a key it shares with ``own`` keeps the user's value.
    """
    user = dict(init) if isinstance(init, Mapping) else {"*": init}
    return {**dict(own), **user}


class NetResDeep(_BookNet):
    """conv 3→n → ReLU → pool, ``n_blocks`` :class:`ResBlock` (n channels), pool, fc 8·8·n→32 →
    ReLU → fc.

    The book builds the blocks with ``nn.Sequential(*(n_blocks * [ResBlock(...)]))``: the
    list repeats ONE module, so all blocks share one set of weights. ``shared_block=True``
    reproduces that (one block applied ``n_blocks`` times; its rows in the summary are
    ``block_conv#1`` … ``block_conv#n``); the default builds ``n_blocks`` independent blocks
    ``block1`` … ``blockN``. ResBlock convs get kaiming_normal(fan_in, relu) whatever
    ``init`` says unless ``init`` is a dict naming ``"block*/conv"``. Input
    ``(N, 32, 32, 3)``; output ``(N, num_classes)``.
    """

    @takes(NET, init="torch_default")
    def __init__(
        self,
        n_chans1: int = 32,
        n_blocks: int = 10,
        num_classes: int = 2,
        *,
        shared_block: bool = False,
        residual: bool = True,
        **options,
    ):
        options["init"] = _with_own_init(options["init"], {"block*/conv": "he_normal(fan_in)"})
        arch = dict(n_blocks=n_blocks, shared_block=shared_block, residual=residual)
        self._build(n_chans1, num_classes, options, **arch)

    def _blocks(self, kw, rngs, *, n_blocks: int, shared_block: bool, residual: bool):
        check_count("n_blocks", n_blocks)
        self.n_blocks = n_blocks
        self.shared_block = shared_block
        self.conv1 = conv3(3, self.n_chans1, kw, self.compute)
        if shared_block:
            self.block = ResBlock(self.n_chans1, residual=residual, compute=self.compute, **kw)
        else:
            for i in range(1, n_blocks + 1):
                block = ResBlock(self.n_chans1, residual=residual, compute=self.compute, **kw)
                setattr(self, f"block{i}", block)
        return 8 * 8 * self.n_chans1

    def __call__(self, x: Array, *, return_features: bool = False):
        self._check(x)
        f: dict[str, Array] = collections.OrderedDict()
        x = rec(f, "conv1", self.conv1(x))
        x = rec(f, "relu1", jax.nn.relu(x))
        x = self._pool(f, "pool1", x)
        for i in range(1, self.n_blocks + 1):
            if self.shared_block:
                x = self.block(x, f, "block", f"#{i}")
            else:
                x = getattr(self, f"block{i}")(x, f, f"block{i}")
        x = self._pool(f, "pool2", x)
        x = self._fc(f, x, jax.nn.relu, "relu2", why="8*8*n_chans1")
        return output(x, f, return_features)
