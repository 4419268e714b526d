"""The three classic VGG heads, all taking the backbone's NHWC feature map.

* :class:`FCHead` (``head="fc"``) — torchvision's classifier: adaptive average pooling to
  7×7, flatten, fc6 (→4096) → ReLU → Dropout → fc7 (→4096) → ReLU → Dropout → fc8.
* :class:`ConvHead` (``head="fc_conv"``) — the same three layers as convolutions (a 7×7
  VALID conv, then two 1×1 convs), so a larger input gives a score map ("dense
  evaluation" in the VGG paper), which is then averaged.
* :class:`GAPHead` (``head="gap"``) — conv(s) straight to ``num_classes`` channels, then
  global average pooling; optional ReLU on the scores, optional FC after the pooling.

Each head takes the layer options of :mod:`vggjax.models.options` (``dtype``, ``param_dtype``,
``compute`` and ``rngs``, which a head requires); fc and fc_conv also take :data:`CLASSIFIER`'s
``hidden`` and ``dropout``.

Every head records its intermediate activations in the ``feats`` dict it is given, under
stable names (``fc6``, ``relu6``, ``score_map``, …); :func:`vggjax.summary` relies on this.
Flatten order: NHWC flattens as (h, w, c); ``vggjax.convert`` permutes torchvision's
(c, h, w)-ordered fc6 weights accordingly.

A head built on its own has all-zero weights (layers are created with cheap zero
initialisers): :class:`~vggjax.models.vgg.VGG` initialises its head; for a standalone head
call ``vggjax.initializers.apply(head, "he_normal", rngs=nnx.Rngs(0))``.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import layers, ops
from vggjax.errors import ConfigError
from vggjax.models.options import LAYER, REQUIRED, layer_kw, option, takes

Array = jax.Array

# The two options the fc and fc_conv heads share: fc6's and fc7's width, and their dropout.
CLASSIFIER = (option("hidden", 4096, "int"), option("dropout", 0.5, "float"))


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def _apply(module, x: Array, feats: dict, name: str) -> Array:
    """Apply ``module`` (skipped when None) and record the output under ``name``."""
    if module is None:
        return x
    x = module(x)
    feats[name] = x
    return x


class FCHead(nnx.Module):
    """Adaptive avg-pool to ``pool_size``² → flatten → fc6 → ReLU → Dropout → fc7 → ReLU →
    Dropout → fc8.

    Input ``(N, h, w, in_channels)`` with any h, w ≥ 1; output logits ``(N, num_classes)``.
    """

    min_feature_size = 1

    @takes(CLASSIFIER + LAYER, rngs=REQUIRED)
    def __init__(self, in_channels: int, num_classes: int, *, pool_size: int = 7, **options):
        hidden, dropout, rngs = options["hidden"], options["dropout"], options["rngs"]
        _check_hidden("fc", hidden)
        kw = layer_kw(options)
        self.compute = options["compute"]
        self.pool_size = pool_size
        self.fc6 = layers.linear(in_channels * pool_size * pool_size, hidden, **kw)
        self.drop6 = _dropout(dropout, rngs)
        self.fc7 = layers.linear(hidden, hidden, **kw)
        self.drop7 = _dropout(dropout, rngs)
        self.fc8 = layers.linear(hidden, num_classes, **kw)

    def __call__(self, x: Array, feats: dict) -> Array:
        feats["avgpool"] = layers.adaptive_avg_pool(
            x, self.pool_size
        )  # unused values cost nothing under jit
        # avgpool → flatten → fc6 as one op, so that the policy may fold the pooling into
        # fc6's kernel on CPU (vggjax.ops.pooled_linear); elsewhere it is pool then matmul.
        fc6 = self.fc6
        kernel = fc6.kernel[...]
        bias = fc6.bias[...] if fc6.bias is not None else None
        x, kernel, bias = fc6.promote_dtype((x, kernel, bias), dtype=fc6.dtype)
        x = ops.pooled_linear(
            x, self.pool_size, kernel, bias, precision=fc6.precision, policy=self.compute
        )
        feats["fc6"] = x
        x = _apply(jax.nn.relu, x, feats, "relu6")
        x = _apply(self.drop6, x, feats, "drop6")
        x = _apply(self.fc7, x, feats, "fc7")
        x = _apply(jax.nn.relu, x, feats, "relu7")
        x = _apply(self.drop7, x, feats, "drop7")
        return _apply(self.fc8, x, feats, "fc8")


class ConvHead(nnx.Module):
    """FC-as-convolution head: fc6 as a ``kernel_size``² VALID conv, fc7/fc8 as 1×1 convs.

    Input ``(N, h, w, C)`` with h, w ≥ ``kernel_size``; the score map is
    ``(N, h-k+1, w-k+1, num_classes)`` (2×2 for a 256×256 image through VGG with k=7) and
    the logits are its spatial mean, or the map itself when ``return_map`` is set.
    """

    @takes(CLASSIFIER + LAYER, rngs=REQUIRED)
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        kernel_size: int = 7,
        return_map: bool = False,
        **options,
    ):
        hidden, dropout, rngs = options["hidden"], options["dropout"], options["rngs"]
        _check_hidden("fc_conv", hidden)
        kw = dict(compute=options["compute"], **layer_kw(options))
        self.kernel_size = kernel_size
        self.return_map = return_map
        self.fc6 = layers.conv(in_channels, hidden, kernel_size, padding="VALID", **kw)
        self.drop6 = _dropout(dropout, rngs)
        self.fc7 = layers.conv(hidden, hidden, 1, padding="VALID", **kw)
        self.drop7 = _dropout(dropout, rngs)
        self.fc8 = layers.conv(hidden, num_classes, 1, padding="VALID", **kw)

    @property
    def min_feature_size(self) -> int:
        return self.kernel_size

    def load_fc(self, fc: FCHead) -> "ConvHead":
        """Copy an :class:`FCHead`'s weights into this head (fc6 → k×k conv, fc7/fc8 → 1×1 convs).

        The fc head's flatten order is (h, w, c), which is exactly an HWIO kernel's
        leading axes, so fc6's ``(k·k·C, hidden)`` matrix reshapes to ``(k, k, C, hidden)``.
        Requires ``fc.pool_size == self.kernel_size``. Returns ``self``.
        """
        k = self.kernel_size
        if fc.pool_size != k:
            raise ConfigError(
                f"cannot port an fc head pooled to {fc.pool_size}x{fc.pool_size} "
                f"into a {k}x{k} conv"
            )
        for name in ("fc6", "fc7", "fc8"):
            src, dst = getattr(fc, name), getattr(self, name)
            w = src.kernel.get_value()
            kshape = dst.kernel.get_value().shape
            if w.size != int(jnp.prod(jnp.array(kshape))):
                raise ConfigError(
                    f"{name}: fc weight {tuple(w.shape)} does not fit conv kernel {kshape}"
                )
            dst.kernel.set_value(w.reshape(kshape))
            dst.bias.set_value(src.bias.get_value())
        return self

    def __call__(self, x: Array, feats: dict) -> Array:
        x = _apply(self.fc6, x, feats, "fc6")
        x = _apply(jax.nn.relu, x, feats, "relu6")
        x = _apply(self.drop6, x, feats, "drop6")
        x = _apply(self.fc7, x, feats, "fc7")
        x = _apply(jax.nn.relu, x, feats, "relu7")
        x = _apply(self.drop7, x, feats, "drop7")
        x = _apply(self.fc8, x, feats, "fc8")
        feats["score_map"] = x
        if self.return_map:
            return x
        # Averaging a 1×1 map is the identity, bit for bit (no division happens).
        out = x[:, 0, 0, :] if x.shape[1:3] == (1, 1) else jnp.mean(x, axis=(1, 2))
        feats["avgpool"] = out
        return out


class GAPHead(nnx.Module):
    """Conv(s) to ``num_classes`` channels, then global average pooling (+ optional FC).

    Args:
      hidden: widths of extra conv → (BN) → ReLU layers before the score conv.
      kernel_size: kernel of every head conv (SAME padding).
      score_act: activation on the class-score map: ``None``/``"none"`` (linear scores,
        the fix) or ``"relu"`` (the WSDR case, whose scores can all die).
      batch_norm: BatchNorm after every head conv (the score conv too), as WSDR's
        ``ConvReLU(bn=True)`` does.
      fc: add a ``num_classes → num_classes`` linear layer after the pooling.
    Input ``(N, h, w, C)``; output ``(N, num_classes)``.
    """

    min_feature_size = 1

    @takes(LAYER, rngs=REQUIRED)
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (),
        kernel_size: int = 1,
        score_act: str | None = None,
        batch_norm: bool = False,
        fc: bool = False,
        dropout: float = 0.0,
        norm_momentum: float = 0.9,
        norm_eps: float = 1e-5,
        **options,
    ):
        _check_hidden("gap", hidden)
        kw = layer_kw(options)
        rngs = kw["rngs"]
        ckw = dict(compute=options["compute"], **kw)
        nkw = dict(momentum=norm_momentum, epsilon=norm_eps, **kw)
        self.hidden = tuple(int(h) for h in hidden)
        self.score_act = layers.activation(score_act)
        self.score_act_name = "none" if score_act is None else score_act
        chans = (in_channels,) + self.hidden
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:]), start=1):
            setattr(self, f"conv{i}", layers.conv(cin, cout, kernel_size, **ckw))
            setattr(self, f"bn{i}", layers.batch_norm(cout, **nkw) if batch_norm else None)
        self.score = layers.conv(chans[-1], num_classes, kernel_size, **ckw)
        self.score_bn = layers.batch_norm(num_classes, **nkw) if batch_norm else None
        self.drop = _dropout(dropout, rngs)
        self.fc = layers.linear(num_classes, num_classes, **kw) if fc else None

    def __call__(self, x: Array, feats: dict) -> Array:
        for i in range(1, len(self.hidden) + 1):
            x = _apply(getattr(self, f"conv{i}"), x, feats, f"head_conv{i}")
            x = _apply(getattr(self, f"bn{i}"), x, feats, f"head_bn{i}")
            x = _apply(jax.nn.relu, x, feats, f"head_relu{i}")
        x = _apply(self.score, x, feats, "score")
        x = _apply(self.score_bn, x, feats, "score_bn")
        x = _apply(self.score_act, x, feats, f"score_{self.score_act_name}")
        feats["score_map"] = x
        x = jnp.mean(x, axis=(1, 2))
        feats["gap"] = x
        x = _apply(self.drop, x, feats, "drop")
        return _apply(self.fc, x, feats, "fc")


HEADS = {"fc": FCHead, "fc_conv": ConvHead, "gap": GAPHead}


def make_head(name: str, in_channels: int, num_classes: int, **kwargs) -> nnx.Module:
    """Build the head called ``name`` (``"fc"``, ``"fc_conv"``, ``"gap"``) with its options."""
    from vggjax.errors import one_of

    if name not in HEADS:
        raise one_of("head", name, HEADS)
    cls = HEADS[name]
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {
        "self",
        "in_channels",
        "num_classes",
    }
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for head {name!r}; "
            f"valid: {', '.join(sorted(allowed - {'rngs'}))}"
        )
    return cls(in_channels, num_classes, **kwargs)


def _check_hidden(name: str, hidden: Any) -> None:
    """ConfigError unless ``hidden`` has the head's form: one width for fc/fc_conv, a list of
    widths for gap."""

    def width(h: Any) -> bool:
        return isinstance(h, numbers.Integral) and not isinstance(h, bool) and h > 0

    if name == "gap":
        if not (isinstance(hidden, (list, tuple)) and all(width(h) for h in hidden)):
            raise ConfigError(
                "head 'gap' option hidden is a list of 1x1-conv widths, e.g. (256,), "
                f"or () for none; got {hidden!r}"
            )
    elif not width(hidden):
        raise ConfigError(
            f"head {name!r} option hidden is the width of fc6 and fc7, "
            f"a positive integer such as 4096; got {hidden!r}"
        )
