"""Checking a trainer config, and the sizes a run derives from it and its dataset.

Every key, type and range the trainer reads is checked before anything is built, so a typo or
a wrong value ends in one ``ConfigError`` line (the CLI prints it as ``error: ...``; the table
of such mistakes is ``docs/bad-inputs.md``, generated from ``tests/test_bad_inputs.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import jax
import ml_collections

from vggjax import losses, ops, optim, parallel
from vggjax.errors import ConfigError, one_of

# Integers where 0 means "the default" (minimum 0), or with another minimum, or any integer (None).
_COUNTS = (
    ("num_train_steps", 0),
    ("checkpoint_every_steps", 0),
    ("keep_checkpoints", 1),
    ("eval_batch_size", 0),
    ("image_size", 0),
    ("num_classes", 0),
    ("channels", 0),
    ("num_devices", 0),
    ("seed", None),
)


def _unknown_keys(
    config: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "config"
) -> list[tuple[str, str | None]]:
    """``[(dotted key, closest known key or None)]`` for keys of ``config`` that ``known`` lacks."""
    out = []
    for key in config.keys():
        if key not in known:
            close = difflib.get_close_matches(key, list(known.keys()), n=1, cutoff=0.6)
            out.append((f"{prefix}.{key}", f"{prefix}.{close[0]}" if close else None))
    return out


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for a key the trainer never reads (a typo in a config file is otherwise
    silently ignored)."""
    from vggjax.configs import default

    known = default.get_config()
    bad = _unknown_keys(config, known)
    for section in ("optim", "diagnostics"):
        sub = config.get(section)
        if bad or not hasattr(sub, "keys"):
            continue
        bad = _unknown_keys(
            sub, known[section] if section != "optim" else optim.DEFAULTS, f"config.{section}"
        )
    if bad:
        key, close = bad[0]
        hint = (
            f"did you mean {close!r}?"
            if close
            else "see vggjax/configs/default.py for the valid keys"
        )
        raise ConfigError(f"unknown config key {key!r} in the config file; {hint}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise a one-line ConfigError for the first unknown key or bad value of ``config``."""
    check_keys(config)
    for key in ("batch_size", "num_epochs", "log_every_steps"):
        value = config.get(key)
        if not _is_int(value) or value < 0 or (key == "batch_size" and value == 0):
            raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")
    for key, minimum in _COUNTS:
        value = config.get(key, 0 if minimum is None else minimum)
        if not _is_int(value) or (minimum is not None and value < minimum):
            what = (
                "an integer"
                if minimum is None
                else (f"an integer >= {minimum}" + (" (0 = automatic)" if minimum == 0 else ""))
            )
            raise ConfigError(f"config.{key} must be {what}, got {value!r}")
    every = config.get("eval_every_epochs", 1.0)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
        raise ConfigError(
            "config.eval_every_epochs must be a number > 0 (e.g. 0.5 = twice per epoch), "
            f"got {every!r}"
        )
    if not isinstance(config.get("download", True), bool):
        raise ConfigError(f"config.download must be True or False, got {config.download!r}")
    if config.parallel not in ("jit", "pmap"):
        raise one_of("parallel mode", config.parallel, ("jit", "pmap"))
    if config.get("nan_policy", "stop") not in ("stop", "skip"):
        raise one_of("nan_policy", config.nan_policy, ("stop", "skip"))
    ops.Policy.parse(config.get("compute", "auto"))  # a bad policy spec is a one-line ConfigError


def loss_name(config: ml_collections.ConfigDict, multilabel: bool) -> str:
    """``config.loss``, with ``"auto"`` meaning softmax cross-entropy, or multi-label soft margin
    for multi-label data."""
    name = config.get("loss", "auto")
    if name == "auto":
        return "multilabel_soft_margin" if multilabel else "softmax_cross_entropy"
    losses.get_loss(name)  # validates, listing the valid names
    return name


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of a run: what the dataset and the config decide together."""

    num_classes: int
    channels: int
    image_size: int
    loss: str
    batch_size: int
    eval_batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    classes: tuple[int, ...] | None


def check_batches(config: ml_collections.ConfigDict) -> int:
    """Check that the train and eval batches split over the devices; returns the eval batch size."""
    if config.parallel == "pmap":
        n = (config.get("num_devices", 0) or jax.local_device_count()) * jax.process_count()
    else:
        n = config.get("num_devices", 0) or jax.device_count()
    parallel.check_batch(config.batch_size, n)
    eval_bs = config.get("eval_batch_size", 0) or config.batch_size
    parallel.check_batch(eval_bs, n, "eval_batch_size")
    return eval_bs


def plan(config: ml_collections.ConfigDict, info: Any) -> Plan:
    """The :class:`Plan` of ``config`` on a dataset described by ``info``
    (:func:`vggjax.data.get_info`).

    Call :func:`check_config` and :func:`check_batches` first.
    """
    batch = config.batch_size
    steps_per_epoch = max(1, (info.num_train_examples or batch) // batch)
    return Plan(
        num_classes=config.get("num_classes", 0) or info.num_classes,
        channels=config.get("channels", 0) or info.channels,
        image_size=config.get("image_size", 0) or info.image_size,
        loss=loss_name(config, info.multilabel),
        batch_size=batch,
        eval_batch_size=config.get("eval_batch_size", 0) or batch,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.get("num_train_steps", 0) or config.num_epochs * steps_per_epoch,
        eval_every=max(1, int(config.get("eval_every_epochs", 1) * steps_per_epoch)),
        classes=tuple(config.get("classes", ()) or ()) or None,
    )
