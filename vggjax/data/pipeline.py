"""The tf.data input pipeline: TFDS datasets by name, sharded per process, deterministic.

:func:`load` turns a TFDS name (``vggjax_digits``, ``cifar10``, ``imagenette``,
``imagenet2012``, ``voc/2007``, …) into batches of numpy arrays for one process:
``image float32 [local_batch, H, W, C]`` (NHWC, normalised), ``label`` (``int32
[local_batch]``, or ``float32 [local_batch, K]`` multi-hot for multi-label datasets) and
``mask bool [local_batch]`` (False only on the padding rows of the last eval batch).
Training streams are infinite, shuffled, augmented and a pure function of ``(seed,
process, position)``, so a run resumed with ``start_step=k`` sees exactly the batches
``k, k+1, …`` that an uninterrupted run would have seen. Evaluation is one pass in file
order, padded so every batch has the same shape (one jit compilation) and every process
yields the same number of batches (multi-host collectives never wait on a missing step).
``classes=(0, 2)`` keeps only those classes of a single-label dataset and relabels them
0, 1, … in that order (CIFAR-2: airplane vs bird); positions, epochs and padding then all
count the kept examples only.

TensorFlow only runs the input pipeline here: it is hidden from every GPU at import so
it can never take accelerator memory away from JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

try:  # Must happen before TF touches a device; harmless on tensorflow-cpu.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF already initialised its devices: nothing left to do.
    pass

import tensorflow_datasets as tfds

from vggjax.data import digits as _digits  # noqa: F401  (registers the embedded builders)
from vggjax.errors import ConfigError, DataError, one_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDED_DATASETS = ("vggjax_digits", "vggjax_digits2", "vggjax_digits_multilabel")
CROPS = ("none", "pad", "resized")
_EVAL_CENTER_FRACTION = 0.875  # ImageNet convention: 224 of 256.
_MAX_NAMES_SHOWN = 20  # Class names listed in an error message (ImageNet has 1,000).


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training-time augmentation.

    ``crop``: ``"none"``; ``"pad"`` (zero-pad ``pad_fraction × image_size`` pixels on each
    side, then take a random ``image_size`` crop — the CIFAR recipe, 4 px at 32); or
    ``"resized"`` (Inception-style random crop of ``min_scale..1`` of the area with aspect
    ratio 3/4..4/3, resized to ``image_size`` — the ImageNet recipe). ``flip``: random
    horizontal flip with probability 1/2 (off for digits: a mirrored 3 is not a 3).
    """

    crop: str = "none"
    flip: bool = False
    pad_fraction: float = 0.125
    min_scale: float = 0.08


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Per-dataset defaults; one row of :data:`_SPECS` instead of if-chains."""

    train_split: str = "train"
    test_split: str = "test"
    label: str = "label"  # Feature key of the label.
    mean: tuple[float, ...] = (0.5,)  # In 0..1 pixel units, per channel (or one for all).
    std: tuple[float, ...] = (0.5,)
    image_size: int = 32
    augment: Augment = Augment()
    eval_crop: str = "resize"  # "resize": whole image to a square; "center": central 87.5%.
    manual_files: str | None = None  # What a manual-download dataset needs in downloads/manual.


_SMALL = Augment(crop="pad")
_SMALL_FLIP = Augment(crop="pad", flip=True)
_LARGE = Augment(crop="resized", flip=True)
_IMAGENET = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224, augment=_LARGE)

# Keyed by the TFDS name without config/version ("voc" covers "voc/2007").
_SPECS: dict[str, _Spec] = {
    # Embedded digits: mean/std of the 0..1 pixels of each train split (8x8); no flip.
    "vggjax_digits": _Spec(mean=(0.3055,), std=(0.3759,), augment=_SMALL),
    "vggjax_digits2": _Spec(mean=(0.3114,), std=(0.3745,), augment=_SMALL),
    "vggjax_digits_multilabel": _Spec(mean=(0.1898,), std=(0.3312,), augment=_SMALL),
    "mnist": _Spec(mean=(0.1307,), std=(0.3081,), augment=_SMALL),
    "fashion_mnist": _Spec(mean=(0.2860,), std=(0.3530,), augment=_SMALL),
    "cifar10": _Spec(
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), augment=_SMALL_FLIP
    ),
    "cifar100": _Spec(
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), augment=_SMALL_FLIP
    ),
    "imagenette": _Spec(test_split="validation", eval_crop="center", **_IMAGENET),
    "imagenet2012": _Spec(
        test_split="validation",
        eval_crop="center",
        manual_files="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org",
        **_IMAGENET,
    ),
    # VOC classification: train on trainval, test on test; "labels" is the set of object
    # classes in the image (the deduplicated objects/label), turned into a 20-way multi-hot.
    # Crops keep >= 25% of the area so most labelled objects stay in view.
    "voc": _Spec(
        train_split="train+validation",
        label="labels",
        **{**_IMAGENET, "augment": Augment(crop="resized", flip=True, min_scale=0.25)},
    ),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and trainer need to know about a dataset.

    ``num_classes`` is the width of the logits; ``multilabel`` says labels are float32
    multi-hot vectors ``[K]`` rather than int32 class ids. Example counts are over all
    processes (None only when neither TFDS metadata nor tf.data knows them).
    ``channels`` and ``image_size`` describe the images :func:`load` yields (``image_size``
    is the dataset's default when returned by :func:`get_info`). ``classes``: the
    dataset's own ids of the kept classes when a class subset was asked for (label ``i``
    is dataset class ``classes[i]``; ``num_classes``, ``class_names`` and the counts then
    describe the subset), else None.
    """

    name: str
    num_classes: int
    multilabel: bool
    num_train_examples: int | None
    num_test_examples: int | None
    channels: int
    image_size: int
    class_names: tuple[str, ...] = dataclasses.field(repr=False)  # 1,000 for ImageNet.
    train_split: str
    test_split: str
    classes: tuple[int, ...] | None = None


def _base_name(name: str) -> str:
    return name.split(":")[0].split("/")[0]


def _spec(name: str, builder: tfds.core.DatasetBuilder | None = None) -> _Spec:
    base = _base_name(name)
    if base in _SPECS:
        return _SPECS[base]
    # Any other TFDS image-classification dataset: no augmentation, [-1, 1] pixels, and
    # its "test" split if it has one (several only have "validation").
    splits = list(builder.info.splits) if builder is not None else []
    test = (
        "test"
        if "test" in splits or not splits
        else ("validation" if "validation" in splits else "test")
    )
    return _Spec(test_split=test)


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Open the TFDS builder for ``name``, building the embedded datasets on first use."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}; the embedded (offline) ones are {', '.join(EMBEDDED_DATASETS)}, "
            "and any name in tfds.list_builders() works once prepared"
        ) from None
    except (
        ValueError,
        AssertionError,
    ):  # Unknown config ("voc/2099") or version ("cifar10:9.9.9").
        try:
            cls = tfds.builder_cls(_base_name(name))
            configs = [c.name for c in (cls.BUILDER_CONFIGS or [])]
            parts = [f"configs: {', '.join(configs)}"] if configs else []
            parts += [f"version: {cls.VERSION}"] if getattr(cls, "VERSION", None) else []
            known = "; ".join(parts) or "see tfds.list_builders()"
        except Exception:
            known = "see tfds.list_builders()"
        raise DataError(
            f"dataset {name!r} has no such config or version ({known}); write it as NAME[/CONFIG][:VERSION]"
        ) from None
    if _base_name(name) in EMBEDDED_DATASETS and not builder.is_prepared():
        try:
            from tensorflow_datasets.core.utils import tqdm_utils

            was_active = tqdm_utils._active  # tfds has no public getter; restore the user's choice
            tfds.display_progress_bar(False)
            try:
                builder.download_and_prepare()  # Reads scikit-learn's bundled files: no network.
            finally:
                tfds.display_progress_bar(was_active)
        except Exception:
            # Another process (multi-host, same data_dir) may have finished first.
            if not builder.is_prepared():
                raise
    return builder


def _not_prepared(name: str, builder: tfds.core.DatasetBuilder) -> DataError:
    root = builder.data_dir_root
    spec = _spec(name)
    # The python form is there because the `tfds` CLI of TFDS 4.9.10 will not start
    # without apache-beam installed.
    build = (
        f'`tfds build {name} --data_dir {root}` (or `python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"`)"
    )
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS or spec.manual_files:
        need = spec.manual_files or "the files named on its TFDS catalog page"
        return DataError(
            f"dataset {name!r} is not prepared in {root} and needs a manual download: put {need} in "
            f"{root}/downloads/manual, then run {build}"
        )
    return DataError(
        f"dataset {name!r} is not prepared in {root} and vggjax never downloads; on a machine with "
        f"network run {build}, then copy its {_base_name(name)} folder into {root}"
    )


def _open(
    name: str,
    builder: tfds.core.DatasetBuilder,
    split: Any,
    *,
    decoders: Any = None,
    shown_split: str | None = None,
) -> tf.data.Dataset:
    """``builder.as_dataset`` with TFDS's errors turned into one-line :class:`DataError`."""
    try:
        return builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    except AssertionError:  # TFDS's "could not find data in …".
        raise _not_prepared(name, builder) from None
    except (ValueError, KeyError) as e:
        splits = ", ".join(builder.info.splits) or "unknown"
        raise DataError(
            f"dataset {name!r} has no split {shown_split or str(split)!r} ({str(e).splitlines()[0]}); its splits: {splits}"
        ) from None


def _num_examples(name: str, builder: tfds.core.DatasetBuilder, split: Any) -> int | None:
    """Examples in ``split`` (sub-splits included) from the metadata, else from tf.data."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):  # No metadata (e.g. tfds.testing.mock_data).
        n = int(_open(name, builder, split).cardinality())
        return n if n >= 0 else None


def _label_info(
    name: str, builder: tfds.core.DatasetBuilder, spec: _Spec
) -> tuple[str, int, tuple[str, ...]]:
    """Return (kind, num_classes, class_names); kind is "int", "multi_hot" or "sequence"."""
    features = builder.info.features
    if spec.label not in features:
        raise DataError(
            f"dataset {name!r} has no {spec.label!r} feature ({', '.join(features)}); it is not an image classification dataset"
        )
    feature = features[spec.label]
    if isinstance(feature, tfds.features.ClassLabel):
        return "int", feature.num_classes, tuple(feature.names)
    if isinstance(feature, tfds.features.Sequence) and isinstance(
        feature.feature, tfds.features.ClassLabel
    ):
        return "sequence", feature.feature.num_classes, tuple(feature.feature.names)
    if isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 1 and feature.shape[0]:
        k = int(feature.shape[0])
        return "multi_hot", k, tuple(str(i) for i in range(k))
    raise DataError(
        f"dataset {name!r}: label feature {spec.label!r} ({type(feature).__name__}) is neither a class id nor a multi-hot vector"
    )


def _image_shape(
    name: str, builder: tfds.core.DatasetBuilder
) -> tuple[int | None, int | None, int]:
    """Stored image shape (H, W, C); H and W are None for datasets of mixed sizes."""
    features = builder.info.features
    if "image" not in features or not isinstance(features["image"], tfds.features.Image):
        raise DataError(
            f"dataset {name!r} has no 'image' feature; vggjax reads image classification datasets only"
        )
    h, w, c = features["image"].shape
    return h, w, int(c or 3)


def _resolve_classes(
    name: str, classes: Any, label_kind: str, num_classes: int, names: Sequence[str]
) -> tuple[int, ...] | None:
    """Validate a class subset: distinct ids (or names) of a single-label dataset's classes."""
    if classes is None:
        return None
    if label_kind != "int":
        raise ConfigError(
            f"classes selects classes of a single-label dataset, but {name!r} is multi-label ({num_classes} classes "
            "as a multi-hot vector); leave classes unset"
        )
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise ConfigError(f"classes must be a sequence of class ids, e.g. (0, 2); got {classes!r}")
    shown = ", ".join(f"{i} {n}" for i, n in enumerate(names[:_MAX_NAMES_SHOWN]))
    shown += ", …" if len(names) > _MAX_NAMES_SHOWN else ""
    valid = f"valid ids are 0..{num_classes - 1} ({shown})"
    ids = []
    for c in classes:
        if isinstance(c, str) and c in names:  # A class name: "airplane".
            c = list(names).index(c)
        elif isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise ConfigError(
                f"classes of dataset {name!r} must be class ids or names; {c!r} is neither: {valid}"
            )
        if not 0 <= c < num_classes:
            raise ConfigError(f"class id {c} is out of range for dataset {name!r}: {valid}")
        ids.append(int(c))
    if not ids:
        raise ConfigError(
            f"classes is empty; give at least one class of dataset {name!r} ({valid}), or None for all"
        )
    dups = sorted({c for c in ids if ids.count(c) > 1})
    if dups:
        raise ConfigError(
            f"classes {tuple(ids)} names class {', '.join(map(str, dups))} more than once; each class may appear once"
        )
    return tuple(ids)


# Label histograms of splits and process shards, keyed by where the data lives: a class
# subset reads each split's labels once per process, not once per load/get_info call.
_LABEL_COUNTS: dict[tuple, np.ndarray] = {}


def _decoders(spec: _Spec) -> tfds.decode.PartialDecoding:
    """Read only the image (still encoded) and the label: what the pipeline keeps."""
    return tfds.decode.PartialDecoding(
        {"image": True, spec.label: True}, decoders={"image": tfds.decode.SkipDecoding()}
    )


def _label_counts(
    name: str,
    builder: tfds.core.DatasetBuilder,
    spec: _Spec,
    split: str,
    num_classes: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Examples per class (int64 [num_classes]) in this process's shard of ``split``.

    One pass over the labels (images are read but never decoded), cached per dataset
    location, split and shard. It opens the split with the same decoders as the pipeline,
    so the count is of exactly the stream :func:`build_dataset` filters (which matters for
    ``tfds.testing.mock_data``, whose fake examples depend on the features read).
    """
    shard = (
        split
        if process_count == 1
        else tfds.split_for_jax_process(
            split, process_index=process_index, process_count=process_count
        )
    )
    try:
        total = int(builder.info.splits[shard].num_examples)
    except (KeyError, ValueError, TypeError):  # No metadata (tfds.testing.mock_data): count afresh.
        total = None
    key = (
        str(builder.data_dir),
        builder.info.full_name,
        spec.label,
        split,
        process_index,
        process_count,
        total,
    )
    if total is None or key not in _LABEL_COUNTS:
        label = spec.label

        @tf.autograph.experimental.do_not_convert
        def get_label(example: dict[str, tf.Tensor]) -> tf.Tensor:
            return example[label]

        ds = _open(name, builder, shard, decoders=_decoders(spec), shown_split=split)
        ds = ds.map(get_label, num_parallel_calls=tf.data.AUTOTUNE).batch(4096).prefetch(2)
        counts = np.zeros(num_classes, np.int64)
        for labels in tfds.as_numpy(ds):
            labels = labels[
                (labels >= 0) & (labels < num_classes)
            ]  # -1: unlabelled examples of some datasets.
            counts += np.bincount(labels, minlength=num_classes).astype(np.int64)
        _LABEL_COUNTS[key] = counts
    return _LABEL_COUNTS[key]


def _count(
    name: str,
    builder: tfds.core.DatasetBuilder,
    spec: _Spec,
    split: str,
    classes: tuple[int, ...] | None,
    num_classes: int,
    process_index: int = 0,
    process_count: int = 1,
) -> int | None:
    """Examples in this process's shard of ``split``, only those of ``classes`` if given."""
    if classes is None:
        shard = (
            split
            if process_count == 1
            else tfds.split_for_jax_process(
                split, process_index=process_index, process_count=process_count
            )
        )
        return _num_examples(name, builder, shard)
    counts = _label_counts(name, builder, spec, split, num_classes, process_index, process_count)
    return int(counts[list(classes)].sum())


def _describe(
    name: str, builder: tfds.core.DatasetBuilder, spec: _Spec, classes: Any = None
) -> DatasetInfo:
    kind, num_classes, names = _label_info(name, builder, spec)
    classes = _resolve_classes(name, classes, kind, num_classes, names)
    return DatasetInfo(
        name=name,
        num_classes=num_classes if classes is None else len(classes),
        multilabel=kind != "int",
        num_train_examples=_count(name, builder, spec, spec.train_split, classes, num_classes),
        num_test_examples=_count(name, builder, spec, spec.test_split, classes, num_classes),
        channels=_image_shape(name, builder)[-1],
        image_size=spec.image_size,
        class_names=names if classes is None else tuple(names[c] for c in classes),
        train_split=spec.train_split,
        test_split=spec.test_split,
        classes=classes,
    )


def get_info(
    name: str, data_dir: str | None = None, *, classes: Sequence[int | str] | None = None
) -> DatasetInfo:
    """Describe dataset ``name`` (building the embedded ones if needed).

    Reads nothing but metadata, except with ``classes`` (see :func:`load`): then the
    labels of the train and test splits are read once (cached) to count the kept examples.
    Raises :class:`DataError` for an unknown name or a dataset that is not prepared in
    ``data_dir`` (default: TFDS's, ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``), and
    :class:`ConfigError` for bad ``classes``.
    """
    builder = _builder(name, data_dir)
    spec = _spec(name, builder)
    if not builder.is_prepared():
        _open(
            name, builder, spec.train_split
        )  # Raises the "how to prepare" error (mock data passes).
    return _describe(name, builder, spec, classes)


def _resolve_augment(augment: Any, spec: _Spec) -> Augment:
    if augment is None or augment == "none":
        return Augment()
    if isinstance(augment, Augment):
        aug = augment
    elif augment == "default":
        aug = spec.augment
    elif hasattr(augment, "items"):  # dict or ml_collections.ConfigDict: overrides of the default.
        overrides = dict(augment.items())
        fields = {f.name for f in dataclasses.fields(Augment)}
        for key in overrides:
            if key not in fields:
                raise one_of("augment option", key, fields)
        aug = dataclasses.replace(spec.augment, **overrides)
    else:
        raise ConfigError(
            f"augment must be 'default', 'none', or a dict of {', '.join(f.name for f in dataclasses.fields(Augment))}; got {augment!r}"
        )
    if aug.crop not in CROPS:
        raise one_of("augment crop", aug.crop, CROPS)
    if not 0 < aug.min_scale <= 1 or not 0 <= aug.pad_fraction < 1:
        raise ConfigError(f"augment needs 0 < min_scale <= 1 and 0 <= pad_fraction < 1; got {aug}")
    return aug


def _resolve_normalize(normalize: Any, spec: _Spec, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, std) as float32 [channels] in 0..1 pixel units."""
    if normalize is None or normalize == "none":
        mean, std = (0.0,), (1.0,)
    elif normalize == "default":
        mean, std = spec.mean, spec.std
    elif normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif isinstance(normalize, Sequence) and not isinstance(normalize, str) and len(normalize) == 2:
        mean, std = tuple(np.ravel(normalize[0])), tuple(np.ravel(normalize[1]))
    else:
        raise ConfigError(
            f"normalize must be 'default', 'imagenet', 'none' or (mean, std) in 0..1 units; got {normalize!r}"
        )
    out = []
    for stat in (mean, std):
        stat = np.asarray(stat, np.float32)
        if stat.size == 3 and channels == 1:  # RGB statistics for an image turned grey.
            stat = stat.mean(keepdims=True)
        if stat.size == 1:
            stat = np.repeat(stat, channels)
        if stat.size != channels:
            raise ConfigError(
                f"normalize mean/std have {stat.size} values but the images have {channels} channels; give 1 or {channels}"
            )
        out.append(stat)
    if np.any(out[1] <= 0):
        raise ConfigError(f"normalize std must be positive; got {tuple(out[1])}")
    return out[0], out[1]


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


def _make_preprocess(
    *,
    spec: _Spec,
    aug: Augment | None,
    image_size: int,
    src_shape: tuple[int | None, int | None, int],
    channels: int,
    mean: np.ndarray,
    std: np.ndarray,
    label_kind: str,
    num_classes: int,
    aug_key: tf.Tensor | None,
    label_table: np.ndarray | None = None,
):
    """Build ``fn(index, example) -> {image, label, mask}``; ``aug`` None means evaluation."""
    src_channels = src_shape[-1]
    scale = tf.constant(1.0 / (255.0 * std), tf.float32)
    table = None if label_table is None else tf.constant(label_table, tf.int32)
    shift = tf.constant(mean / std, tf.float32)

    @tf.autograph.experimental.do_not_convert  # plain TF ops; AutoGraph only warns here
    def fn(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = tf.io.decode_image(example["image"], channels=src_channels, expand_animations=False)
        image.set_shape(src_shape)  # Lets a resize to the stored size be skipped.
        if aug is None:
            image = (
                _center_crop(image, image_size)
                if spec.eval_crop == "center"
                else _resize(image, image_size)
            )
        else:
            # One independent key per element and per random op: keyed by position, not by
            # call order, so results do not depend on thread scheduling or restarts.
            crop_key, flip_key = tf.unstack(
                tf.random.experimental.stateless_split(tf.random.fold_in(aug_key, index), 2)
            )
            if aug.crop == "resized":
                image = _random_resized_crop(image, image_size, crop_key, aug.min_scale)
            else:
                image = _resize(image, image_size)
                if aug.crop == "pad":
                    image = _pad_random_crop(image, image_size, crop_key, aug.pad_fraction)
            if aug.flip:
                image = tf.image.stateless_random_flip_left_right(image, flip_key)
        image.set_shape([image_size, image_size, src_channels])
        if channels != src_channels:
            image = (
                tf.image.rgb_to_grayscale(image)
                if channels == 1
                else tf.tile(image, [1, 1, channels])
            )
        image = image * scale - shift

        label = example[spec.label]
        if label_kind == "int":
            label = tf.cast(label, tf.int32)
            if table is not None:  # Class subset: dataset id -> position in `classes`.
                label = tf.gather(table, label)
        elif (
            label_kind == "sequence"
        ):  # Class ids of the objects present → multi-hot (empty → zeros).
            label = tf.minimum(
                tf.reduce_sum(tf.one_hot(label, num_classes, dtype=tf.float32), axis=0), 1.0
            )
        else:
            label = tf.cast(label, tf.float32)
        return {"image": image, "label": label, "mask": tf.constant(True)}

    return fn


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = (
        True  # Parallel map/interleave must keep order: same seed, same batches.
    )
    # Input pipelines are throughput-bound: parallelism across elements beats within ops.
    options.threading.max_intra_op_parallelism = 1
    return options


def build_dataset(
    name: str,
    split: str | None = None,
    *,
    global_batch_size: int,
    train: bool,
    image_size: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
    augment: str | Mapping[str, Any] | Augment | None = "default",
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = "default",
    channels: int | None = None,
    shuffle_buffer: int = 50_000,
    classes: Sequence[int | str] | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Build this process's batched ``tf.data.Dataset`` of ``name``; see :func:`load`.

    Elements are dicts of ``image float32 [local_batch, S, S, C]``, ``label`` (int32
    ``[local_batch]`` or float32 multi-hot ``[local_batch, K]``) and ``mask bool
    [local_batch]``, with ``local_batch = global_batch_size // process_count`` and ``S =
    image_size``. Training data is infinite; evaluation data is one padded pass.
    """
    if process_index is None or process_count is None:
        import jax  # Only for the defaults: the pipeline itself never needs JAX.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ConfigError(
            f"process_index {process_index} must be in [0, process_count={process_count})"
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ConfigError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the {process_count} processes"
        )
    if start_step < 0:
        raise ConfigError(f"start_step must be >= 0; got {start_step}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None (the dataset's own); got {channels}")
    local_batch = global_batch_size // process_count

    builder = _builder(name, data_dir)
    spec = _spec(name, builder)
    split = split or (spec.train_split if train else spec.test_split)
    image_size = image_size or spec.image_size
    src_shape = _image_shape(name, builder)
    src_channels = src_shape[-1]
    channels = channels or src_channels
    label_kind, num_classes, class_names = _label_info(name, builder, spec)
    classes = _resolve_classes(name, classes, label_kind, num_classes, class_names)
    mean, std = _resolve_normalize(normalize, spec, channels)
    aug = _resolve_augment(augment, spec) if train else None

    # Decode images only after shuffling/skipping (the buffer holds compressed bytes and
    # resuming skips without decoding) and read only the features we use. TFDS itself
    # caches splits under 250 MiB (digits, CIFAR) in RAM after the first epoch.
    local_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count
    )
    local = _open(name, builder, local_split, decoders=_decoders(spec), shown_split=split)
    # n_local counts the examples this process yields per epoch (the kept ones with classes):
    # the resume arithmetic and the eval padding below rely on it being exact.
    n_local = _count(name, builder, spec, split, classes, num_classes, process_index, process_count)
    info = dataclasses.replace(
        _describe(name, builder, spec, classes), channels=channels, image_size=image_size
    )
    label_table = None
    if classes is not None:
        # Drop the other classes before anything counts positions (shuffle, enumerate, skip),
        # so element indices, epochs and augmentation keys are those of the kept stream.
        label_table = np.full(num_classes, -1, np.int32)
        label_table[list(classes)] = np.arange(len(classes), dtype=np.int32)
        kept = tf.constant(classes, tf.int64)
        label_key = spec.label

        @tf.autograph.experimental.do_not_convert
        def keep(example: dict[str, tf.Tensor]) -> tf.Tensor:
            return tf.reduce_any(tf.equal(tf.cast(example[label_key], tf.int64), kept))

        local = local.filter(keep)

    seed_key = tf.constant([seed, process_index], tf.int64)
    preprocess = _make_preprocess(
        spec=spec,
        aug=aug,
        image_size=image_size,
        src_shape=src_shape,
        channels=channels,
        mean=mean,
        std=std,
        label_kind=label_kind,
        num_classes=num_classes,
        aug_key=tf.random.fold_in(seed_key, 2),
        label_table=label_table,
    )

    if train:
        if not n_local:
            which = f" of classes {classes}" if classes is not None else ""
            raise DataError(
                f"dataset {name!r} split {split!r} has no examples{which} for process {process_index} of {process_count}"
            )
        buffer = max(1, min(shuffle_buffer, n_local))
        shuffle_key = tf.random.fold_in(seed_key, 1)

        @tf.autograph.experimental.do_not_convert
        def epoch(e: tf.Tensor) -> tf.data.Dataset:
            # Each epoch's order depends only on (seed, process, epoch), so a resumed run can
            # jump straight to its epoch instead of replaying every earlier shuffle. Files are
            # read in a fixed order: TFDS already shuffled the examples when it wrote them.
            s = tf.random.stateless_uniform(
                [], seed=tf.random.fold_in(shuffle_key, e), minval=None, maxval=None, dtype=tf.int64
            )
            return local.shuffle(buffer, seed=s, reshuffle_each_iteration=False).enumerate(
                start=e * n_local
            )

        first_epoch, offset = divmod(start_step * local_batch, n_local)
        ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(offset)
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local_batch, drop_remainder=True)
    else:
        # Every process must run the same number of eval steps: pad to the largest shard.
        counts = [n_local if p == process_index else None for p in range(process_count)]
        for p in range(process_count):
            if counts[p] is None:
                counts[p] = _count(
                    name, builder, spec, split, classes, num_classes, p, process_count
                )
        if any(c is None for c in counts):
            raise DataError(
                f"dataset {name!r} split {split!r}: TFDS does not know its size; run `tfds build {name}` again to refresh the metadata"
            )
        num_batches = max(1, math.ceil(max(counts) / local_batch))
        ds = local.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors(
            {
                "image": tf.zeros([image_size, image_size, channels], tf.float32),
                "label": tf.zeros(
                    [] if label_kind == "int" else [num_classes],
                    tf.int32 if label_kind == "int" else tf.float32,
                ),
                "mask": tf.constant(False),
            }
        ).repeat()
        ds = ds.concatenate(padding).take(num_batches * local_batch)
        ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
    return ds, info


def load(
    name: str,
    split: str | None = None,
    *,
    global_batch_size: int,
    train: bool,
    image_size: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
    augment: str | Mapping[str, Any] | Augment | None = "default",
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = "default",
    channels: int | None = None,
    shuffle_buffer: int = 50_000,
    classes: Sequence[int | str] | None = None,
) -> tuple[Iterator[dict[str, np.ndarray]] | Iterable[dict[str, np.ndarray]], DatasetInfo]:
    """Return ``(batches, info)``: this process's numpy batches of dataset ``name``.

    Each batch is ``{"image": float32 [B, S, S, C] (NHWC, (x/255 - mean)/std), "label":
    int32 [B] or float32 multi-hot [B, K], "mask": bool [B]}`` with ``B =
    global_batch_size // process_count`` (processes default to JAX's) and ``S =
    image_size`` (default per dataset: 32 for digits/CIFAR, 224 for ImageNet-like).
    ``train=True``: an infinite *iterator*, shuffled and augmented (``augment``:
    "default" per dataset, "none", or a dict of :class:`Augment` fields), deterministic
    in ``seed`` and starting at batch ``start_step``. ``train=False``: a re-iterable
    finite pass (every ``iter()`` starts over), the last batch padded with ``mask=False``
    rows. ``split`` defaults to the dataset's train/test split and may be any TFDS split
    string (``"train[:90%]"``). ``normalize``: "default" (dataset statistics),
    "imagenet", "none" (0..1), or ``(mean, std)`` in 0..1 units. ``channels``: 1 or 3
    to convert grey↔RGB. ``shuffle_buffer``: examples (still compressed) shuffled
    together; the whole split when it fits, a sliding window otherwise. ``classes``:
    distinct class ids (or names) of a single-label dataset; only their examples are kept
    and labelled by position, so ``classes=(0, 2)`` on CIFAR-10 gives airplane 0, bird 1
    and ``info`` describes the subset (a single class is allowed; a :class:`ConfigError`
    for multi-label datasets, unknown ids and repeats). Counting the kept examples reads
    the split's labels once per process at start-up. Embedded datasets are built on first
    use; others must already be prepared in ``data_dir`` (a :class:`DataError` says how).
    """
    ds, info = build_dataset(
        name,
        split,
        global_batch_size=global_batch_size,
        train=train,
        image_size=image_size,
        seed=seed,
        data_dir=data_dir,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
        augment=augment,
        normalize=normalize,
        channels=channels,
        shuffle_buffer=shuffle_buffer,
        classes=classes,
    )
    batches = tfds.as_numpy(ds)
    return (iter(batches) if train else batches), info


def get_datasets(
    name: str,
    *,
    global_batch_size: int,
    eval_batch_size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    start_step: int = 0,
    augment: str | Mapping[str, Any] | Augment | None = "default",
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = "default",
    channels: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    classes: Sequence[int | str] | None = None,
) -> tuple[Iterator[dict[str, np.ndarray]], Iterable[dict[str, np.ndarray]], DatasetInfo]:
    """Return ``(train_iterator, eval_batches, info)`` for the dataset's default splits.

    The trainer's one-call entry point: both come from :func:`load` with the same image
    size, channels, normalisation and class subset (``classes``, see :func:`load`);
    ``eval_batch_size`` defaults to ``global_batch_size``. ``train_iterator`` starts at
    batch ``start_step``.
    """
    common = dict(
        image_size=image_size,
        data_dir=data_dir,
        normalize=normalize,
        channels=channels,
        process_index=process_index,
        process_count=process_count,
        classes=classes,
    )
    train_iter, info = load(
        name,
        global_batch_size=global_batch_size,
        train=True,
        seed=seed,
        start_step=start_step,
        augment=augment,
        **common,
    )
    eval_batches, _ = load(
        name, global_batch_size=eval_batch_size or global_batch_size, train=False, **common
    )
    return train_iter, eval_batches, info
