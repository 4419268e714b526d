"""The trainer's train and eval steps for a config, on a target's compile-only devices, without
the dataset.

The path is ``python -m vggjax.train``'s: the trainer's config checks
(:func:`vggjax.training.config.check_config`), its :class:`~vggjax.training.config.Plan`
(classes, channels, image size, batch sizes, schedule length), the optimizer, ``init_state``
and :func:`vggjax.training.runner.pure_steps` jitted with
:func:`~vggjax.training.runner.mesh_jit_options` (or pmapped), as
:func:`vggjax.bench.exports.trainer_steps` builds them. Only the dataset's metadata is read
(``tfds.builder(name).info``: features, and split sizes where TFDS knows them), never its
examples; ``--config.num_classes``/``channels``/``image_size`` override it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from vggjax.aot.errors import AotError
from vggjax.aot.targets import Target

# Training-split sizes of datasets whose TFDS metadata has no split sizes until prepared (the
# schedule's length depends on them; shapes and memory do not).
TRAIN_EXAMPLES = {
    "imagenet2012": 1_281_167,
    "imagenette": 9_469,
    "cifar10": 50_000,
    "cifar100": 50_000,
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "vggjax_digits": 1_438,
    "vggjax_digits2": 285,
    "vggjax_digits_multilabel": 6_000,
}


@dataclasses.dataclass(frozen=True)
class DatasetSizes:
    """What the trainer's :func:`~vggjax.training.config.plan` reads from a dataset description
    (``vggjax.data.DatasetInfo``'s fields of those names), and where it came from."""

    num_classes: int
    channels: int
    image_size: int
    num_train_examples: int | None
    multilabel: bool
    source: str


def _label(features: Any) -> tuple[int, bool] | None:
    """``(classes, multilabel)`` of a TFDS features dict's label, or None."""
    import tensorflow_datasets as tfds

    for key in ("label", "labels"):
        if key not in features:
            continue
        feature = features[key]
        if isinstance(feature, tfds.features.ClassLabel):
            return feature.num_classes, False
        inner = getattr(feature, "feature", None)
        if isinstance(inner, tfds.features.ClassLabel):
            return inner.num_classes, True
        shape = getattr(feature, "shape", ())
        if len(shape) == 1 and shape[0]:
            return int(shape[0]), True
    return None


def _metadata(name: str, data_dir: str | None) -> tuple[Any, int | None, str]:
    """``(features or None, train examples or None, source)`` from TFDS without reading data."""
    try:
        import tensorflow_datasets as tfds

        import vggjax.data  # noqa: F401 - registers the embedded datasets' builders

        builder = tfds.builder(name, data_dir=data_dir)
        info = builder.info
    except Exception as e:  # noqa: BLE001 - unknown or unreadable: the config must say it
        return None, TRAIN_EXAMPLES.get(name), f"no TFDS metadata ({type(e).__name__})"
    split = "train" if "train" in info.splits else None
    count = info.splits[split].num_examples if split else None
    base = name.split("/")[0].split(":")[0]
    return info.features, count or TRAIN_EXAMPLES.get(base), "TFDS metadata"


def dataset_sizes(config) -> DatasetSizes:
    """The sizes of ``config.dataset`` (TFDS metadata only), overridden by the config's own
    ``num_classes``, ``channels`` and ``image_size``; :class:`AotError` when neither says."""
    features, count, source = _metadata(config.dataset, config.get("data_dir") or None)
    label = _label(features) if features is not None else None
    shape = tuple(features["image"].shape) if features is not None and "image" in features else ()
    subset = tuple(config.get("classes", ()) or ())  # the trainer relabels a subset 0..k-1
    classes = config.get("num_classes", 0) or len(subset) or (label[0] if label else 0)
    channels = config.get("channels", 0) or (shape[-1] if shape and shape[-1] else 0)
    fixed = shape[0] if len(shape) == 3 and shape[0] and shape[0] == shape[1] else 0
    size = config.get("image_size", 0) or fixed
    missing = [k for k, v in (("num_classes", classes), ("channels", channels)) if not v]
    if missing or not size:
        missing += [] if size else ["image_size"]
        raise AotError(
            f"dataset {config.dataset!r}: {source}, so set "
            + " and ".join(f"--config.{k}" for k in missing)
        )
    return DatasetSizes(
        num_classes=int(classes),
        channels=int(channels),
        image_size=int(size),
        num_train_examples=count,
        multilabel=bool(label and label[1]),
        source=source,
    )


def check_batch(batch: int, devices: int, target: str, what: str = "batch_size") -> None:
    """:class:`AotError` unless a global batch of ``batch`` splits evenly over ``devices``."""
    if batch % devices or batch <= 0:
        lo = batch - batch % devices
        raise AotError(
            f"{what}={batch} does not divide over the {devices} devices of {target}; "
            f"use a multiple of {devices} such as {lo or devices} or {lo + devices}"
        )


def plan(config, sizes: DatasetSizes, target: Target):
    """The trainer's :class:`~vggjax.training.config.Plan` for ``config`` on ``target``."""
    from vggjax.training import config as config_lib

    config_lib.check_config(config)  # the trainer's own one-line ConfigErrors
    n = config.get("num_devices", 0) or target.devices
    if n > target.devices:
        raise AotError(f"config.num_devices={n} but {target.name} has {target.devices} devices")
    check_batch(config.batch_size, n, target.name)
    check_batch(
        config.get("eval_batch_size", 0) or config.batch_size, n, target.name, "eval_batch_size"
    )
    return config_lib.plan(config, sizes)


def steps(config, sizes: DatasetSizes, target: Target, devices: list[Any], which=("train", "eval")):
    """``{"train": (step, abstract args), "eval": ...}`` on ``devices`` (mesh-jit: the state
    replicated, the batch sharded ``P("data")``; pmap: per-device arguments)."""
    from vggjax.bench import exports

    p = plan(config, sizes, target)
    n = config.get("num_devices", 0) or len(devices)
    built = exports.trainer_steps(config, plan=p, devices=devices[:n])
    return {k: v for k, v in built.items() if k in which}


def pure(fn: Callable) -> Callable:
    """The function under a ``jax.jit`` or ``jax.pmap`` wrapper."""
    return getattr(fn, "__wrapped__", fn)
