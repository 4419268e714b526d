"""Per-example preprocessing in TensorFlow: decode, crop or resize, augment, normalise, and
the label as the model reads it.

Augmentation is stateless and keyed by the element's position in the stream, so a batch
is the same however many threads map it and whether or not the run was resumed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from vggjax.data.specs import Augment, _Spec

_EVAL_CENTER_FRACTION = 0.875  # ImageNet convention: 224 of 256.


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize to ``size × size`` (float32, 0..255); antialiased so downsizing does not alias."""
    static = image.shape[:2]
    if static[0] == size and static[1] == size:
        return tf.cast(image, tf.float32)
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def _random_resized_crop(
    image: tf.Tensor, size: int, key: tf.Tensor, min_scale: float
) -> tf.Tensor:
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=key,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_scale, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return _resize(tf.slice(image, begin, crop_size), size)


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(image)
    side = tf.cast(
        tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * _EVAL_CENTER_FRACTION, tf.int32
    )
    image = tf.image.crop_to_bounding_box(
        image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side
    )
    return _resize(image, size)


def _pad_random_crop(image: tf.Tensor, size: int, key: tf.Tensor, pad_fraction: float) -> tf.Tensor:
    pad = int(round(size * pad_fraction))
    if pad == 0:
        return image
    # Zero pixels, as torchvision's RandomCrop(padding=…) pads before normalising.
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [size, size, image.shape[-1]], seed=key)


def _eval_image(image: tf.Tensor, spec: _Spec, size: int) -> tf.Tensor:
    """The deterministic evaluation view: the central crop or the whole image, resized."""
    return _center_crop(image, size) if spec.eval_crop == "center" else _resize(image, size)


def _augment_image(image: tf.Tensor, aug: Augment, size: int, key: tf.Tensor) -> tf.Tensor:
    """A random training view of ``image``; ``key`` is this element's own key."""
    # One independent key per element and per random op: keyed by position, not by
    # call order, so results do not depend on thread scheduling or restarts.
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    if aug.crop == "resized":
        image = _random_resized_crop(image, size, crop_key, aug.min_scale)
    else:
        image = _resize(image, size)
        if aug.crop == "pad":
            image = _pad_random_crop(image, size, crop_key, aug.pad_fraction)
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_key)
    return image


def _to_channels(image: tf.Tensor, src_channels: int, channels: int) -> tf.Tensor:
    """Grey to RGB or RGB to grey when the caller asked for other ``channels``."""
    if channels == src_channels:
        return image
    return tf.image.rgb_to_grayscale(image) if channels == 1 else tf.tile(image, [1, 1, channels])


def _image_fn(
    spec: _Spec,
    aug: Augment | None,
    image_size: int,
    src_shape: tuple[int | None, int | None, int],
    channels: int,
    mean: np.ndarray,
    std: np.ndarray,
    aug_key: tf.Tensor | None,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Build ``image(index, encoded) -> float32 [S, S, C]``; ``aug`` None means evaluation."""
    src_channels = src_shape[-1]
    scale = tf.constant(1.0 / (255.0 * std), tf.float32)
    shift = tf.constant(mean / std, tf.float32)

    def image_of(index: tf.Tensor, encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=src_channels, expand_animations=False)
        image.set_shape(src_shape)  # Lets a resize to the stored size be skipped.
        if aug is None:
            image = _eval_image(image, spec, image_size)
        else:
            image = _augment_image(image, aug, image_size, tf.random.fold_in(aug_key, index))
        image.set_shape([image_size, image_size, src_channels])
        return _to_channels(image, src_channels, channels) * scale - shift

    return image_of


def _label_fn(
    label_kind: str, num_classes: int, label_table: np.ndarray | None = None
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Build ``label(stored) -> int32 class id or float32 multi-hot [K]``, as the model reads it."""
    table = None if label_table is None else tf.constant(label_table, tf.int32)

    def label_of(label: tf.Tensor) -> tf.Tensor:
        if label_kind == "int":
            label = tf.cast(label, tf.int32)
            if table is not None:  # Class subset: dataset id -> position in `classes`.
                label = tf.gather(table, label)
            return label
        if label_kind == "sequence":  # Class ids of the objects present → multi-hot (empty → 0).
            return tf.minimum(
                tf.reduce_sum(tf.one_hot(label, num_classes, dtype=tf.float32), axis=0), 1.0
            )
        return tf.cast(label, tf.float32)

    return label_of


def _make_preprocess(
    image_of: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    label_of: Callable[[tf.Tensor], tf.Tensor],
    label_key: str,
) -> Callable[[tf.Tensor, dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
    """Build ``fn(index, example) -> {image, label, mask}`` from :func:`_image_fn` and
    :func:`_label_fn`."""

    @tf.autograph.experimental.do_not_convert  # plain TF ops; AutoGraph only warns here
    def fn(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = image_of(index, example["image"])
        label = label_of(example[label_key])
        return {"image": image, "label": label, "mask": tf.constant(True)}

    return fn
