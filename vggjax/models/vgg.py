"""VGG (Simonyan & Zisserman, 2014): the config table, the backbone, and the builders.

``CFGS`` lists, per configuration, the conv widths with ``"M"`` for a 2×2 max pool — the
same table as torchvision's and timm's ``vgg.py``. :class:`VGG` stacks
conv3×3 → (BatchNorm) → ReLU per entry and then one of the heads in
:mod:`vggjax.models.heads`. Layer names are stable and match the paper's numbering:
``conv{stage}_{i}``, ``bn{stage}_{i}``, ``relu{stage}_{i}``, ``pool{stage}``.

Example::

    model = vggjax.vgg16_bn(num_classes=10, head="gap", init="he_normal", rngs=nnx.Rngs(0))
    logits = model(jnp.ones((8, 32, 32, 3)))             # (8, 10)
    logits, feats = model(x, return_features=True)       # feats["relu3_3"], ...
"""

from __future__ import annotations

import collections
import inspect
from typing import Any, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax import initializers, layers
from vggjax.errors import ConfigError, check_rate, one_of
from vggjax.models import registry
from vggjax.models.heads import make_head
from vggjax.models.options import LAYER, NET, REQUIRED, layer_kw, takes

Array = jax.Array
Cfg = Sequence[Union[int, str]]

CFGS: dict[str, list[Union[int, str]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}

# name -> (config, batch_norm)
ARCHS: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_bn": ("A", True),
    "vgg13": ("B", False),
    "vgg13_bn": ("B", True),
    "vgg16": ("D", False),
    "vgg16_bn": ("D", True),
    "vgg19": ("E", False),
    "vgg19_bn": ("E", True),
}


def scale_width(channels: int, width: float) -> int:
    """Channels after the width multiplier (rounded, at least 1)."""
    return max(1, int(round(channels * width)))


class Features(nnx.Module):
    """The VGG convolutional body: conv3×3(pad 1) → (BN) → ReLU per int in ``cfg``, max-pool
    per "M".

    Input ``(N, H, W, in_channels)``; output ``(N, H/2^p, W/2^p, C_last)`` for p pools.
    """

    @takes(LAYER, rngs=REQUIRED)
    def __init__(
        self,
        cfg: Cfg,
        *,
        in_channels: int = 3,
        batch_norm: bool = False,
        width: float = 1.0,
        norm_momentum: float = 0.9,
        norm_eps: float = 1e-5,
        **options,
    ):
        kw = layer_kw(options)
        self.compute = compute = options["compute"]
        plan: list[tuple[str, str]] = []  # (kind, name) in execution order
        stage, idx, cin = 1, 0, in_channels
        for v in cfg:
            if v == "M":
                plan.append(("pool", f"pool{stage}"))
                stage, idx = stage + 1, 0
                continue
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"a VGG config holds positive conv widths and 'M', got {v!r}")
            idx += 1
            cout = scale_width(v, width)
            name = f"{stage}_{idx}"
            setattr(
                self, f"conv{name}", layers.conv(cin, cout, 3, padding=1, compute=compute, **kw)
            )
            plan.append(("conv", f"conv{name}"))
            if batch_norm:
                setattr(
                    self,
                    f"bn{name}",
                    layers.batch_norm(cout, momentum=norm_momentum, epsilon=norm_eps, **kw),
                )
                plan.append(("bn", f"bn{name}"))
            plan.append(("relu", f"relu{name}"))
            cin = cout
        self.plan = tuple(plan)
        self.out_channels = cin
        self.num_pools = sum(kind == "pool" for kind, _ in plan)

    def __call__(self, x: Array, feats: dict) -> Array:
        for kind, name in self.plan:
            if kind == "pool":
                x = layers.max_pool(x, compute=self.compute)
            elif kind == "relu":
                x = jax.nn.relu(x)
            else:
                x = getattr(self, name)(x)
            feats[name] = x
        return x


class VGG(nnx.Module):
    """A VGG network: :class:`Features` followed by a head.

    Args:
      cfg: a key of :data:`CFGS` ("A", "B", "D", "E") or an explicit list of widths/"M".
      num_classes: outputs of the last layer.
      batch_norm: BatchNorm after every backbone conv (the ``_bn`` variants).
      head: ``"fc"``, ``"fc_conv"`` or ``"gap"`` (see :mod:`vggjax.models.heads`).
      head_options: extra keyword options of the head (e.g. ``{"score_act": "relu",
        "kernel_size": 3, "hidden": [1024], "fc": True}`` for gap, ``{"return_map": True}``
        for fc_conv, ``{"hidden": 1024}`` for fc). Unknown keys raise ConfigError.
      init / bias_init: initialisation specs (:mod:`vggjax.initializers`); the default
        ``"torchvision"`` is torchvision's VGG scheme.
      width: channel multiplier for the backbone and the fc/fc_conv hidden width
        (tiny models for tests and CPU experiments).
      in_channels: input image channels (NHWC).
      dropout: dropout rate of the fc / fc_conv heads (the paper's 0.5).
      norm_momentum / norm_eps: BatchNorm options (Flax momentum convention).
      dtype / param_dtype: computation and parameter dtypes (e.g. bfloat16 compute).
      compute: the compute policy (:class:`vggjax.ops.Policy` or a spec such as ``"auto"``,
        ``"xla"``): how convs, max pools and the pooled fc6 are lowered. ``"auto"`` lowers
        native XLA ops for GPU/TPU and the CPU-tuned formulations for CPU; the values are
        the same either way.
      rngs: ``nnx.Rngs`` or an int seed.
    Call: ``model(x)`` with ``x`` of shape ``(N, H, W, in_channels)`` returns float32 logits
    ``(N, num_classes)``; ``model(x, return_features=True)`` returns ``(logits, feats)``.
    Use ``model.train()`` / ``model.eval()`` to switch dropout and BatchNorm statistics.
    """

    @takes(NET)
    def __init__(
        self,
        cfg: str | Cfg = "D",
        *,
        num_classes: int = 1000,
        batch_norm: bool = False,
        head: str = "fc",
        head_options: Mapping[str, Any] | None = None,
        width: float = 1.0,
        in_channels: int = 3,
        dropout: float = 0.5,
        norm_momentum: float = 0.9,
        norm_eps: float = 1e-5,
        name: str = "VGG",
        **options,
    ):
        if isinstance(cfg, str):
            if cfg not in CFGS:
                raise one_of("VGG config", cfg, CFGS)
            cfg = CFGS[cfg]
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        if not width > 0:
            raise ConfigError(f"width must be > 0, got {width!r}")
        check_rate("dropout", dropout)
        self.compute = compute = options["compute"]
        self.name = name
        self.in_channels = in_channels
        self.num_classes = num_classes
        kw = layer_kw(options)
        self.features = Features(
            cfg,
            in_channels=in_channels,
            batch_norm=batch_norm,
            width=width,
            norm_momentum=norm_momentum,
            norm_eps=norm_eps,
            compute=compute,
            **kw,
        )
        head_kw = dict(head_options or {})
        if head in ("fc", "fc_conv"):
            head_kw.setdefault("hidden", scale_width(4096, width))
            head_kw.setdefault("dropout", dropout)
        if head == "gap" and batch_norm:
            head_kw.setdefault("norm_momentum", norm_momentum)
            head_kw.setdefault("norm_eps", norm_eps)
        self.head = make_head(
            head, self.features.out_channels, num_classes, compute=compute, **head_kw, **kw
        )
        self.head_name = head
        initializers.apply(self, options["init"], options["bias_init"], rngs=kw["rngs"])

    @property
    def min_input_size(self) -> int:
        """Smallest H (= W) the network accepts: 2^pools × the head's minimum feature size."""
        return (2**self.features.num_pools) * self.head.min_feature_size

    def __call__(self, x: Array, *, return_features: bool = False):
        pools = self.features.num_pools
        why = f"{pools} 2x2 max-poolings"
        if self.head.min_feature_size > 1:
            k = self.head.min_feature_size
            why += f" then the {k}x{k} {self.head_name} window"
        layers.check_input(
            x, channels=self.in_channels, min_size=self.min_input_size, name=self.name, why=why
        )
        # OrderedDict, not dict: JAX sorts plain dict keys when feats crosses jit/grad.
        feats: dict[str, Array] = collections.OrderedDict()
        x = self.features(x, feats)
        logits = self.head(x, feats).astype(jnp.float32)
        return (logits, feats) if return_features else logits


def build(arch: str, **kwargs) -> VGG:
    """Build the named VGG (``"vgg11"`` … ``"vgg19_bn"``); keyword options as :class:`VGG`."""
    if arch not in ARCHS:
        raise one_of("architecture", arch, ARCHS)
    cfg, bn = ARCHS[arch]
    kwargs.setdefault("name", arch)
    return VGG(cfg, batch_norm=bn, **kwargs)


def _signature(arch: str) -> inspect.Signature:
    # VGG's own keyword options, declared once in VGG.__init__, less the two the builder fixes;
    # help() and inspect.signature (the registry's option check) show them in full.
    params = inspect.signature(VGG.__init__).parameters
    kept = [p for k, p in params.items() if k not in ("self", "cfg", "batch_norm")]
    kept = [p.replace(default=arch) if p.name == "name" else p for p in kept]
    return inspect.Signature(kept, return_annotation=VGG)


def _builder(arch: str):
    cfg, bn = ARCHS[arch]

    def fn(**kwargs: Any) -> VGG:
        return build(arch, **kwargs)

    bn_text = " with BatchNorm" if bn else ""
    fn.__name__ = fn.__qualname__ = arch
    fn.__signature__ = _signature(arch)
    fn.__doc__ = (
        f"VGG config {cfg}{bn_text} (``{arch}``). Keyword options as :class:`VGG` (all of them "
        "are in this builder's signature). Input NHWC; returns logits."
    )
    return fn


# One builder per row of ARCHS, under its name.
vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn = map(_builder, ARCHS)

for _arch, (_cfg, _bn) in ARCHS.items():
    registry.register(
        _arch,
        globals()[_arch],
        input_size=224,
        description=f"VGG config {_cfg}{' with BatchNorm' if _bn else ''} (torchvision layout)",
        family="vgg",
        fixed=("name",),
    )
