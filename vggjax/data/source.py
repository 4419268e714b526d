"""Reading TFDS: the builder of a dataset name, its splits and what its features are.

Every TFDS failure a user can cause (an unknown name, config or split, a dataset that is
not prepared) becomes a one-line :class:`~vggjax.errors.DataError` that says what to do.
A dataset that is not prepared is prepared on first use (:mod:`vggjax.data.prepare`).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from vggjax.data import digits as _digits  # noqa: F401  (registers the embedded builders)
from vggjax.data import prepare
from vggjax.data.specs import EMBEDDED_DATASETS, _base_name, _Spec, _spec
from vggjax.errors import DataError


def _builder(name: str, data_dir: str | None, download: bool = True) -> tfds.core.DatasetBuilder:
    """Open the TFDS builder for ``name``, preparing it first if it is not there yet
    (:mod:`vggjax.data.prepare`: embedded, Debian's files, or TFDS's download)."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}; the embedded (offline) ones are "
            f"{', '.join(EMBEDDED_DATASETS)}, "
            "and any name in tfds.list_builders() works (prepared, or downloaded on first use)"
        ) from None
    except (
        ValueError,
        AssertionError,
    ):  # Unknown config ("voc/2099") or version ("cifar10:9.9.9").
        raise DataError(
            f"dataset {name!r} has no such config or version ({_known_variants(name)}); "
            "write it as NAME[/CONFIG][:VERSION]"
        ) from None
    if not builder.is_prepared():
        manual = bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS or _spec(name).manual_files)
        embedded = _base_name(name) in EMBEDDED_DATASETS
        prepare.prepare(name, builder, embedded=embedded, manual=manual, download=download)
    return builder


def _known_variants(name: str) -> str:
    """The configs and version the builder class of ``name`` has, for an error message."""
    try:
        cls = tfds.builder_cls(_base_name(name))
        configs = [c.name for c in (cls.BUILDER_CONFIGS or [])]
        parts = [f"configs: {', '.join(configs)}"] if configs else []
        parts += [f"version: {cls.VERSION}"] if getattr(cls, "VERSION", None) else []
        return "; ".join(parts) or "see tfds.list_builders()"
    except Exception:
        return "see tfds.list_builders()"


def _not_prepared(name: str, builder: tfds.core.DatasetBuilder) -> DataError:
    root = builder.data_dir_root
    spec = _spec(name)
    # The python form is there because the `tfds` CLI of TFDS 4.9.10 will not start
    # without apache-beam installed.
    build = (
        f"`tfds build {name} --data_dir {root}` "
        '(or `python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"`)"
    )
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS or spec.manual_files:
        need = spec.manual_files or "the files named on its TFDS catalog page"
        return DataError(
            f"dataset {name!r} is not prepared in {root} and needs a manual download: "
            f"put {need} in {root}/downloads/manual, then run {build}"
        )
    return DataError(
        f"dataset {name!r} is not prepared in {root} and downloads are off "
        f"(--config.download=False or {prepare.OFFLINE_ENV}=1); allow them, or on a machine with "
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
            f"dataset {name!r} has no split {shown_split or str(split)!r} "
            f"({str(e).splitlines()[0]}); its splits: {splits}"
        ) from None


def _decoders(spec: _Spec) -> tfds.decode.PartialDecoding:
    """Read only the image (still encoded) and the label: what the pipeline keeps."""
    return tfds.decode.PartialDecoding(
        {"image": True, spec.label: True}, decoders={"image": tfds.decode.SkipDecoding()}
    )


def _label_info(
    name: str, builder: tfds.core.DatasetBuilder, spec: _Spec
) -> tuple[str, int, tuple[str, ...]]:
    """Return (kind, num_classes, class_names); kind is "int", "multi_hot" or "sequence"."""
    features = builder.info.features
    if spec.label not in features:
        raise DataError(
            f"dataset {name!r} has no {spec.label!r} feature ({', '.join(features)}); "
            "it is not an image classification dataset"
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
        f"dataset {name!r}: label feature {spec.label!r} ({type(feature).__name__}) "
        "is neither a class id nor a multi-hot vector"
    )


def _image_shape(
    name: str, builder: tfds.core.DatasetBuilder
) -> tuple[int | None, int | None, int]:
    """Stored image shape (H, W, C); H and W are None for datasets of mixed sizes."""
    features = builder.info.features
    if "image" not in features or not isinstance(features["image"], tfds.features.Image):
        raise DataError(
            f"dataset {name!r} has no 'image' feature; "
            "vggjax reads image classification datasets only"
        )
    h, w, c = features["image"].shape
    return h, w, int(c or 3)
