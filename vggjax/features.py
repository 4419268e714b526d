"""Feature extraction and perceptual losses with (imported) VGG backbones.

The named taps are the backbone's layer outputs, as :meth:`VGG.__call__` records them with
``return_features=True``: ``conv{s}_{i}``, ``bn{s}_{i}``, ``relu{s}_{i}`` and ``pool{s}``
(e.g. ``relu1_2``, ``relu2_2``, ``relu3_3``, ``relu4_3`` — the layers of Johnson et al.'s
perceptual loss for VGG-16). :func:`extract` runs the backbone only as far as the deepest
requested tap, in inference mode (BatchNorm uses its running statistics), on any image
size, so the classifier head and its minimum input size do not matter.

Example (weights from ``python -m vggjax.convert --from torchvision --arch vgg16 ...``)::

    vgg = vggjax.convert.load("weights/vgg16")
    loss = vggjax.features.perceptual_loss(vgg, generated, target)   # NHWC RGB in [0, 1]
    feats = vggjax.features.extract(vgg, images, ("relu2_2", "relu3_3"))
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from vggjax.errors import ConfigError, ShapeError
from vggjax.models.vgg import VGG

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0..1 units (torchvision's preprocessing)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # BGR, 0..255 units (Keras' / Caffe's preprocessing)
PERCEPTUAL_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
NORMALIZE_MODES = ("torch", "caffe", "none")


def normalize(images: Array, mode: str = "torch") -> Array:
    """Turn RGB images in [0, 1] (NHWC, any float dtype) into what imported VGG weights expect.

    ``"torch"``: ``(x - IMAGENET_MEAN) / IMAGENET_STD`` (torchvision weights); ``"caffe"``:
    channels reversed to BGR, scaled to 0..255, minus ``CAFFE_MEAN_BGR`` (Keras'
    ``keras.applications.vgg16.preprocess_input``); ``"none"``: unchanged. Same shape out.
    """
    if mode == "none":
        return images
    if images.shape[-1] != 3:
        raise ShapeError(
            f"normalize({mode!r}) needs RGB images (N, H, W, 3), got shape {tuple(images.shape)}"
        )
    if mode == "torch":
        return (images - jnp.asarray(IMAGENET_MEAN, images.dtype)) / jnp.asarray(
            IMAGENET_STD, images.dtype
        )
    if mode == "caffe":
        return images[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, images.dtype)
    raise ConfigError(f"unknown normalize mode {mode!r}; valid: {', '.join(NORMALIZE_MODES)}")


def tap_names(model: VGG) -> list[str]:
    """The backbone taps :func:`extract` can return for ``model``, in execution order."""
    return [name for _, name in model.features.plan]


def extract(
    model: VGG,
    images: Array,
    taps: Sequence[str] = PERCEPTUAL_TAPS,
    *,
    normalize_mode: str = "none",
) -> dict[str, Array]:
    """Backbone activations ``{tap: (N, h, w, C)}`` of NHWC ``images`` at the named ``taps``.

    Runs the backbone up to the deepest tap only, with BatchNorm in inference mode
    (running statistics) whatever the model's train/eval mode, and equals the same names
    of ``model(x, return_features=True)`` in eval mode. ``normalize_mode`` first applies
    :func:`normalize` (pass ``"torch"`` or ``"caffe"`` for RGB images in [0, 1]).
    Differentiable in ``images`` (and in the weights). Unknown taps raise ConfigError.
    """
    names = tap_names(model)
    unknown = [t for t in taps if t not in names]
    if unknown:
        raise ConfigError(
            f"unknown feature tap(s) {', '.join(map(repr, unknown))}; valid: {', '.join(names)}"
        )
    if images.ndim != 4 or images.shape[-1] != model.in_channels:
        raise ShapeError(
            f"extract needs NHWC images (N, H, W, {model.in_channels}), "
            f"got shape {tuple(images.shape)}"
        )
    x = normalize(images, normalize_mode)
    last = max(names.index(t) for t in taps) if taps else -1
    wanted = set(taps)
    out: dict[str, Array] = {}
    from vggjax import layers

    for kind, name in model.features.plan[: last + 1]:
        if kind == "pool":
            x = layers.max_pool(x, compute=model.features.compute)
        elif kind == "relu":
            x = jax.nn.relu(x)
        elif kind == "bn":
            x = getattr(model.features, name)(x, use_running_average=True)
        else:
            x = getattr(model.features, name)(x)
        if name in wanted:
            out[name] = x
    return {t: out[t] for t in taps}


def _distance(a: Array, b: Array, distance: str) -> Array:
    d = a.astype(jnp.float32) - b.astype(jnp.float32)
    if distance == "l2":
        return jnp.mean(d * d)
    if distance == "l1":
        return jnp.mean(jnp.abs(d))
    raise ConfigError(f"unknown distance {distance!r}; valid: l1, l2")


def gram_matrix(features: Array) -> Array:
    """Gram matrices ``(N, C, C)`` of NHWC ``features``, divided by ``H·W·C`` (Gatys et al.'s
    style statistics)."""
    n, h, w, c = features.shape
    f = features.reshape(n, h * w, c).astype(jnp.float32)
    return jnp.einsum("npc,npd->ncd", f, f) / (h * w * c)


def perceptual_loss(
    model: VGG,
    images: Array,
    targets: Array,
    *,
    taps: Sequence[str] = PERCEPTUAL_TAPS,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    distance: str = "l2",
    normalize_mode: str = "torch",
    style_weight: float = 0.0,
) -> Array:
    """Feature-matching (perceptual) loss between ``images`` and ``targets``, a float32 scalar.

    Both are NHWC RGB in [0, 1] (normalised with ``normalize_mode``, see
    :func:`normalize`), of the same shape. The loss is the weighted sum over ``taps`` of
    the mean squared (``distance="l2"``) or absolute (``"l1"``) difference of the two
    feature maps (Johnson et al. 2016), plus ``style_weight`` times the squared distance
    of their :func:`gram_matrix` es. ``weights`` is a dict ``{tap: w}`` or a sequence
    aligned with ``taps`` (default 1 each). The targets' features are treated as
    constants (``stop_gradient``); gradients flow to ``images``. BatchNorm always uses its
    running statistics.
    """
    if images.shape != targets.shape:
        raise ShapeError(
            "perceptual_loss needs images and targets of one shape, "
            f"got {tuple(images.shape)} and {tuple(targets.shape)}"
        )
    if weights is None:
        w = [1.0] * len(taps)
    elif isinstance(weights, Mapping):
        w = [float(weights.get(t, 1.0)) for t in taps]
    else:
        w = [float(v) for v in weights]
        if len(w) != len(taps):
            raise ConfigError(f"perceptual_loss got {len(w)} weights for {len(taps)} taps")
    both = extract(model, jnp.concatenate([images, targets]), taps, normalize_mode=normalize_mode)
    n = images.shape[0]
    total = jnp.zeros((), jnp.float32)
    for wi, t in zip(w, taps):
        a, b = both[t][:n], jax.lax.stop_gradient(both[t][n:])
        total = total + wi * _distance(a, b, distance)
        if style_weight:
            total = total + style_weight * wi * _distance(gram_matrix(a), gram_matrix(b), "l2")
    return total
