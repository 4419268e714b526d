"""The caller's pipeline options checked against a dataset: class subset, augmentation and
normalisation.

Each ``_resolve_*`` turns a user-facing value ("default", "none", a dict, a tuple) into
the one form the pipeline uses, or raises a one-line :class:`~vggjax.errors.ConfigError`
that names the valid choices, before any data is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vggjax.data.specs import CROPS, IMAGENET_MEAN, IMAGENET_STD, Augment, _Spec
from vggjax.errors import ConfigError, one_of

_MAX_NAMES_SHOWN = 20  # Class names listed in an error message (ImageNet has 1,000).


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """``(process_index, process_count)``, JAX's where not given, checked."""
    if process_index is None or process_count is None:
        import jax  # Only for the defaults: the pipeline itself never needs JAX.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ConfigError(
            f"process_index {process_index} must be in [0, process_count={process_count})"
        )
    return process_index, process_count


def _check_sizes(
    global_batch_size: int, process_count: int, start_step: int, channels: int | None
) -> None:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ConfigError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"{process_count} processes"
        )
    if start_step < 0:
        raise ConfigError(f"start_step must be >= 0; got {start_step}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None (the dataset's own); got {channels}")


def _resolve_classes(
    name: str, classes: Any, label_kind: str, num_classes: int, names: Sequence[str]
) -> tuple[int, ...] | None:
    """Validate a class subset: distinct ids (or names) of a single-label dataset's classes."""
    if classes is None:
        return None
    if label_kind != "int":
        raise ConfigError(
            f"classes selects classes of a single-label dataset, but {name!r} is multi-label "
            f"({num_classes} classes as a multi-hot vector); leave classes unset"
        )
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise ConfigError(f"classes must be a sequence of class ids, e.g. (0, 2); got {classes!r}")
    valid = _valid_ids(num_classes, names)
    ids = [_class_id(name, c, num_classes, names, valid) for c in classes]
    if not ids:
        raise ConfigError(
            f"classes is empty; give at least one class of dataset {name!r} ({valid}), "
            "or None for all"
        )
    dups = sorted({c for c in ids if ids.count(c) > 1})
    if dups:
        raise ConfigError(
            f"classes {tuple(ids)} names class {', '.join(map(str, dups))} more than once; "
            "each class may appear once"
        )
    return tuple(ids)


def _valid_ids(num_classes: int, names: Sequence[str]) -> str:
    """``"valid ids are 0..K-1 (0 name, 1 name, …)"`` for error messages."""
    shown = ", ".join(f"{i} {n}" for i, n in enumerate(names[:_MAX_NAMES_SHOWN]))
    shown += ", …" if len(names) > _MAX_NAMES_SHOWN else ""
    return f"valid ids are 0..{num_classes - 1} ({shown})"


def _class_id(name: str, c: Any, num_classes: int, names: Sequence[str], valid: str) -> int:
    """One entry of ``classes`` (an id or a class name) as a checked class id."""
    if isinstance(c, str) and c in names:  # A class name: "airplane".
        c = list(names).index(c)
    elif isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
        raise ConfigError(
            f"classes of dataset {name!r} must be class ids or names; {c!r} is neither: {valid}"
        )
    if not 0 <= c < num_classes:
        raise ConfigError(f"class id {c} is out of range for dataset {name!r}: {valid}")
    return int(c)


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
            "augment must be 'default', 'none', or a dict of "
            f"{', '.join(f.name for f in dataclasses.fields(Augment))}; got {augment!r}"
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
            "normalize must be 'default', 'imagenet', 'none' or (mean, std) in 0..1 units; "
            f"got {normalize!r}"
        )
    out = [_per_channel(stat, channels) for stat in (mean, std)]
    if np.any(out[1] <= 0):
        raise ConfigError(f"normalize std must be positive; got {tuple(out[1])}")
    return out[0], out[1]


def _per_channel(stat: Any, channels: int) -> np.ndarray:
    """One normalisation statistic as float32 [channels]."""
    stat = np.asarray(stat, np.float32)
    if stat.size == 3 and channels == 1:  # RGB statistics for an image turned grey.
        stat = stat.mean(keepdims=True)
    if stat.size == 1:
        stat = np.repeat(stat, channels)
    if stat.size != channels:
        raise ConfigError(
            f"normalize mean/std have {stat.size} values but the images have {channels} "
            f"channels; give 1 or {channels}"
        )
    return stat
