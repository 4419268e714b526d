"""The order of the examples: a class filter, the infinite shuffled training stream and the
padded evaluation pass.

Both streams are pure functions of ``(seed, process, position)``: a training run resumed
at step ``k`` skips straight to the batches ``k, k+1, …`` of an uninterrupted run, and
every process yields the same number of equally shaped evaluation batches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

Preprocess = Callable[[tf.Tensor, dict], dict]


def _keep_classes(
    local: tf.data.Dataset, label_key: str, classes: tuple[int, ...], num_classes: int
) -> tuple[tf.data.Dataset, np.ndarray]:
    """``local`` without the examples of other classes, and the dataset id -> label table."""
    # Drop the other classes before anything counts positions (shuffle, enumerate, skip),
    # so element indices, epochs and augmentation keys are those of the kept stream.
    label_table = np.full(num_classes, -1, np.int32)
    label_table[list(classes)] = np.arange(len(classes), dtype=np.int32)
    kept = tf.constant(classes, tf.int64)

    @tf.autograph.experimental.do_not_convert
    def keep(example: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.reduce_any(tf.equal(tf.cast(example[label_key], tf.int64), kept))

    return local.filter(keep), label_table


def _train_stream(
    local: tf.data.Dataset,
    preprocess: Preprocess,
    n_local: int,
    local_batch: int,
    start_step: int,
    shuffle_buffer: int,
    seed_key: tf.Tensor,
) -> tf.data.Dataset:
    """Endless epochs of ``local`` (``n_local`` examples), batched, from batch ``start_step``."""
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
    return ds.batch(local_batch, drop_remainder=True)


def _padding(image_size: int, channels: int, label_kind: str, num_classes: int) -> dict:
    """The element that fills the last eval batch: zeros, ``mask=False``."""
    return {
        "image": tf.zeros([image_size, image_size, channels], tf.float32),
        "label": tf.zeros(
            [] if label_kind == "int" else [num_classes],
            tf.int32 if label_kind == "int" else tf.float32,
        ),
        "mask": tf.constant(False),
    }


def _eval_stream(
    local: tf.data.Dataset,
    preprocess: Preprocess,
    num_batches: int,
    local_batch: int,
    padding: dict,
) -> tf.data.Dataset:
    """One pass over ``local`` in file order, filled up with ``padding`` to ``num_batches``
    full batches."""
    ds = local.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    ds = ds.take(num_batches * local_batch)
    return ds.batch(local_batch, drop_remainder=True)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Parallel map/interleave must keep order: same seed, same batches.
    options.deterministic = True
    # Input pipelines are throughput-bound: parallelism across elements beats within ops.
    options.threading.max_intra_op_parallelism = 1
    return options
