"""Reference case 003: the slim OverFeat with 1×1-conv heads (60×60, 3 classes).

The source's bugs sit behind flags."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import initializers, layers
from vggjax.errors import check_count, check_rate
from vggjax.models.options import NET, layer_kw, takes
from vggjax.models.reference.common import output, rec
from vggjax.models.vgg import scale_width

Array = jax.Array

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

    @takes(NET, init=None)
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
        **options,
    ):
        check_count("extra_1x1", extra_1x1)
        check_rate("dropout", dropout)
        kw = layer_kw(options)
        rngs = kw["rngs"]
        c = functools.partial(scale_width, width=width)
        self.compute = options["compute"]
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
        init, bias_init = options["init"], options["bias_init"]
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
        x = rec(f, name, getattr(self, name)(x))
        if self.batch_norm:
            x = rec(f, f"{name}_bn", getattr(self, f"{name}_bn")(x))
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
        x = rec(f, "relu11", jax.nn.relu(x))
        # The source bug: `net = slim.conv2d(inputs, ...)` for conv12 discards conv11.
        x = self._conv("conv12", image if self.conv12_reads_input else x, f)
        x = rec(f, "relu12", jax.nn.relu(x))
        x = rec(f, "pool1", layers.max_pool(x, compute=self.compute))
        for name in ("conv2", "pool2", "conv3", "conv4", "conv5", "pool5"):
            if name.startswith("pool"):
                x = rec(f, name, layers.max_pool(x, compute=self.compute))
            else:
                x = self._conv(name, x, f)
                x = rec(f, "relu" + name[4:], jax.nn.relu(x))
        x = self._conv("fc6", x, f)
        x = rec(f, "relu6", jax.nn.relu(x))
        x = rec(f, "dropout6", self.dropout6(x))
        x = self._conv("fc7", x, f)
        x = rec(f, "relu7", jax.nn.relu(x))
        for i in range(1, self.extra_1x1 + 1):
            x = self._conv(f"fc7_{i}", x, f)
            x = rec(f, f"relu7_{i}", jax.nn.relu(x))
        pooled = not (self.pool_in_train_only and self.deterministic)
        if pooled:
            x = rec(f, "avgpool", jnp.mean(x, axis=(1, 2), keepdims=True))
        x = rec(f, "fc9", self.fc9(x))
        if self.dropout is not None:
            x = rec(f, "dropout", self.dropout(x))
        logits = x[:, 0, 0, :] if pooled else x  # spatial_squeeze
        return output(logits, f, return_features)
