"""Reference case 004: the two-conv BatchNorm net of the zero-initialisation study."""

from __future__ import annotations

import collections

import jax
from flax import nnx

from vggjax import initializers, layers
from vggjax.models.options import LAYER, layer_kw, takes
from vggjax.models.reference.common import output, rec

Array = jax.Array


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

    @takes(LAYER)
    def __init__(
        self,
        num_classes: int = 3,
        *,
        init: initializers.InitSpec = "he_normal(fan_in)",
        only_conv2: bool = False,
        **options,
    ):
        nkw = layer_kw(options)
        rngs = nkw["rngs"]
        kw = dict(compute=options["compute"], **nkw)
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
            x = rec(f, "conv2", self.conv2(x))
            return output(x, f, return_features)
        x = rec(f, "conv1", self.conv1(x))
        x = rec(f, "bn1", self.bn1(x))
        x = rec(f, "relu1", jax.nn.relu(x))
        x = rec(f, "conv2", self.conv2(x))
        x = rec(f, "bn2", self.bn2(x))
        x = rec(f, "relu2", jax.nn.relu(x))
        return output(x, f, return_features)
