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
import functools
import inspect
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

# The package imports this module before any other of its modules, so this runs before
# anything in vggjax.data touches a TensorFlow device.
try:  # Must happen before TF touches a device; harmless on tensorflow-cpu.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF already initialised its devices: nothing left to do.
    pass

import tensorflow_datasets as tfds

from vggjax.data.options import (
    _check_sizes,
    _processes,
    _resolve_augment,
    _resolve_classes,
    _resolve_normalize,
)
from vggjax.data.preprocess import _image_fn, _label_fn, _make_preprocess
from vggjax.data.source import _builder, _decoders, _image_shape, _label_info, _open
from vggjax.data.specs import (  # noqa: F401 - the constants are public here too
    CROPS,
    EMBEDDED_DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    DatasetInfo,
    _Spec,
    _spec,
)
from vggjax.data.streams import (
    _eval_stream,
    _keep_classes,
    _options,
    _padding,
    _train_stream,
)
from vggjax.errors import DataError

# Label histograms of splits and process shards, keyed by where the data lives: a class
# subset reads each split's labels once per process, not once per load/get_info call.
_LABEL_COUNTS: dict[tuple, np.ndarray] = {}


def _shard(split: str, process_index: int, process_count: int) -> Any:
    """This process's part of ``split`` (the split itself for a single process)."""
    if process_count == 1:
        return split
    return tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count
    )


def _num_examples(name: str, builder: tfds.core.DatasetBuilder, split: Any) -> int | None:
    """Examples in ``split`` (sub-splits included) from the metadata, else from tf.data."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):  # No metadata (e.g. tfds.testing.mock_data).
        n = int(_open(name, builder, split).cardinality())
        return n if n >= 0 else None


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
    shard = _shard(split, process_index, process_count)
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
        _LABEL_COUNTS[key] = _read_label_counts(name, builder, spec, shard, split, num_classes)
    return _LABEL_COUNTS[key]


def _read_label_counts(
    name: str,
    builder: tfds.core.DatasetBuilder,
    spec: _Spec,
    shard: Any,
    split: str,
    num_classes: int,
) -> np.ndarray:
    """The uncached pass of :func:`_label_counts` over the labels of ``shard``."""
    label = spec.label

    @tf.autograph.experimental.do_not_convert
    def get_label(example: dict[str, tf.Tensor]) -> tf.Tensor:
        return example[label]

    ds = _open(name, builder, shard, decoders=_decoders(spec), shown_split=split)
    ds = ds.map(get_label, num_parallel_calls=tf.data.AUTOTUNE).batch(4096).prefetch(2)
    counts = np.zeros(num_classes, np.int64)
    for labels in tfds.as_numpy(ds):
        # -1: unlabelled examples of some datasets.
        labels = labels[(labels >= 0) & (labels < num_classes)]
        counts += np.bincount(labels, minlength=num_classes).astype(np.int64)
    return counts


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
        return _num_examples(name, builder, _shard(split, process_index, process_count))
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
    name: str,
    data_dir: str | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    download: bool = True,
) -> DatasetInfo:
    """Describe dataset ``name``, preparing it first if it is not there yet (see :func:`load`).

    Reads nothing but metadata, except with ``classes`` (see :func:`load`): then the
    labels of the train and test splits are read once (cached) to count the kept examples.
    Raises :class:`DataError` for an unknown name or a dataset that is not prepared in
    ``data_dir`` (default: TFDS's, ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``), and
    :class:`ConfigError` for bad ``classes``.
    """
    builder = _builder(name, data_dir, download)
    spec = _spec(name, builder)
    if not builder.is_prepared():
        # Raises the "how to prepare" error (mock data passes).
        _open(name, builder, spec.train_split)
    return _describe(name, builder, spec, classes)


def _eval_batches(counts: list[int | None], local_batch: int, name: str, split: str) -> int:
    """Eval batches per process, given every process's example count: every process must run
    the same number of eval steps, so all pad to the largest shard."""
    if any(c is None for c in counts):
        raise DataError(
            f"dataset {name!r} split {split!r}: TFDS does not know its size; "
            f"run `tfds build {name}` again to refresh the metadata"
        )
    return max(1, math.ceil(max(counts) / local_batch))


def _no_examples(
    name: str, split: str, classes: Any, process_index: int, process_count: int
) -> DataError:
    which = f" of classes {classes}" if classes is not None else ""
    return DataError(
        f"dataset {name!r} split {split!r} has no examples{which} "
        f"for process {process_index} of {process_count}"
    )


def _local_examples(
    name: str,
    builder: tfds.core.DatasetBuilder,
    spec: _Spec,
    split: str,
    process_index: int,
    process_count: int,
) -> tf.data.Dataset:
    """This process's examples of ``split``, images still encoded."""
    # Decode images only after shuffling/skipping (the buffer holds compressed bytes and
    # resuming skips without decoding) and read only the features we use. TFDS itself
    # caches splits under 250 MiB (digits, CIFAR) in RAM after the first epoch.
    local_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count
    )
    return _open(name, builder, local_split, decoders=_decoders(spec), shown_split=split)


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
    download: bool = True,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Build this process's batched ``tf.data.Dataset`` of ``name``; see :func:`load`.

    Elements are dicts of ``image float32 [local_batch, S, S, C]``, ``label`` (int32
    ``[local_batch]`` or float32 multi-hot ``[local_batch, K]``) and ``mask bool
    [local_batch]``, with ``local_batch = global_batch_size // process_count`` and ``S =
    image_size``. Training data is infinite; evaluation data is one padded pass.
    """
    process_index, process_count = _processes(process_index, process_count)
    _check_sizes(global_batch_size, process_count, start_step, channels)
    local_batch = global_batch_size // process_count

    builder = _builder(name, data_dir, download)
    spec = _spec(name, builder)
    split = split or (spec.train_split if train else spec.test_split)
    image_size = image_size or spec.image_size
    src_shape = _image_shape(name, builder)
    channels = channels or src_shape[-1]
    label_kind, num_classes, class_names = _label_info(name, builder, spec)
    classes = _resolve_classes(name, classes, label_kind, num_classes, class_names)
    mean, std = _resolve_normalize(normalize, spec, channels)
    aug = _resolve_augment(augment, spec) if train else None

    local = _local_examples(name, builder, spec, split, process_index, process_count)
    label_table = None
    if classes is not None:
        local, label_table = _keep_classes(local, spec.label, classes, num_classes)
    # Examples in shard p of n (the kept ones with classes): the resume arithmetic and the
    # eval padding below rely on the counts being exact.
    count = functools.partial(_count, name, builder, spec, split, classes, num_classes)
    n_local = count(process_index, process_count)
    info = dataclasses.replace(
        _describe(name, builder, spec, classes), channels=channels, image_size=image_size
    )
    seed_key = tf.constant([seed, process_index], tf.int64)
    aug_key = tf.random.fold_in(seed_key, 2)
    preprocess = _make_preprocess(
        _image_fn(spec, aug, image_size, src_shape, channels, mean, std, aug_key),
        _label_fn(label_kind, num_classes, label_table),
        spec.label,
    )
    if train:
        if not n_local:
            raise _no_examples(name, split, classes, process_index, process_count)
        ds = _train_stream(
            local, preprocess, n_local, local_batch, start_step, shuffle_buffer, seed_key
        )
    else:
        counts = [
            n_local if p == process_index else count(p, process_count) for p in range(process_count)
        ]
        num_batches = _eval_batches(counts, local_batch, name, split)
        padding = _padding(image_size, channels, label_kind, num_classes)
        ds = _eval_stream(local, preprocess, num_batches, local_batch, padding)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
    return ds, info


def load(
    name: str, split: str | None = None, **options: Any
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
    the split's labels once per process at start-up. A dataset not yet prepared in
    ``data_dir`` is prepared on first use (:mod:`vggjax.data.prepare`): the embedded ones are
    built, ``fashion_mnist`` is read from Debian's files where they are installed, others are
    downloaded by TFDS unless ``download=False`` or ``VGGJAX_OFFLINE=1`` (then a
    :class:`DataError` says how to prepare it).
    """
    ds, info = build_dataset(name, split, **options)
    batches = tfds.as_numpy(ds)
    return (iter(batches) if options["train"] else batches), info


# load takes build_dataset's arguments, which are declared once, there; help() and
# inspect.signature show them in full.
load.__signature__ = inspect.signature(build_dataset).replace(
    return_annotation=inspect.signature(load).return_annotation
)


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
    download: bool = True,
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
        download=download,
    )
    shuffled = dict(seed=seed, start_step=start_step, augment=augment)
    train_iter, info = load(
        name, global_batch_size=global_batch_size, train=True, **shuffled, **common
    )
    eval_batches, _ = load(
        name, global_batch_size=eval_batch_size or global_batch_size, train=False, **common
    )
    return train_iter, eval_batches, info
