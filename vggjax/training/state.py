"""The train state (one pytree, checkpointed whole) and how a model becomes one.

``TrainState`` holds everything that changes during training. :func:`state_from_model` turns
an NNX model you built yourself into ``(train_graphdef, eval_graphdef, state)``;
:func:`init_state` does the same from a trainer config (the model looked up by name in
:mod:`vggjax.models.registry`) without allocating anything until ``make()`` is called.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vggjax import ops
from vggjax.errors import ConfigError
from vggjax.freeze import Frozen, freeze
from vggjax.models import registry


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as a whole).

    ``params`` are the trainable ``nnx.Param`` weights; ``frozen`` the non-trainable ones;
    ``batch_stats`` the BatchNorm running statistics; ``rngs`` the random streams
    (dropout); ``opt_state`` the optax state (momentum, learning-rate schedule state).
    """

    step: jax.Array
    params: nnx.State
    frozen: nnx.State
    batch_stats: nnx.State
    rngs: nnx.State
    opt_state: Any


def split_model(model: nnx.Module):
    """``(graphdef, params, frozen, batch_stats, rngs)``: the jit-boundary split of a model."""
    return nnx.split(model, nnx.Param, Frozen, nnx.BatchStat, ...)


def merge(graphdef, state: TrainState) -> nnx.Module:
    """Rebuild the NNX model of ``state`` (inside a jitted function this costs nothing).

    The model gets its own Variables (``copy=True``): running it updates BatchNorm
    statistics and RNG counters in the model only, never in ``state`` (which the train
    step still needs intact, e.g. to keep the old statistics when it skips a NaN step).
    """
    return nnx.merge(graphdef, state.params, state.frozen, state.batch_stats, state.rngs, copy=True)


def state_from_model(
    model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
    """``(train_graphdef, eval_graphdef, state)`` for an already-built ``model``.

    The entry point for experiments and user code that build their own network: pair it
    with :func:`~vggjax.training.step.make_train_step` / ``make_eval_step`` and ``jax.jit``
    or :func:`~vggjax.training.loop.fit`. The model is put in training mode for the train
    graphdef and eval mode for the eval one.
    """
    model.eval()
    eval_graphdef = split_model(model)[0]
    model.train()
    graphdef, params, frozen, batch_stats, rngs = split_model(model)
    state = TrainState(jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, tx.init(params))
    return graphdef, eval_graphdef, state


# Keyword parameters the trainer sets itself, never taken from config.model_options.
TRAINER_SET = ("num_classes", "in_channels", "dtype", "compute", "rngs")


def _dtype(config: ml_collections.ConfigDict):
    dtype = {"float32": None, "bfloat16": jnp.bfloat16}.get(config.get("dtype", "float32"), "bad")
    if dtype == "bad":
        raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    return dtype


def _check_options(config: ml_collections.ConfigDict, options: dict, params: dict | None) -> None:
    """Raise ConfigError for a ``model_options`` key the model's builder does not take."""
    if params is None:  # a builder with **kwargs: it checks its own options
        return
    valid = sorted(k for k in params if k not in TRAINER_SET)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown model_options key {key!r} for model {config.model!r}; "
                f"{hint}valid: {', '.join(valid)}"
            )


def _freeze_globs(config: ml_collections.ConfigDict) -> list[str]:
    globs = config.get("freeze", ()) or ()
    if isinstance(globs, str):
        globs = [g for g in globs.split(",") if g]
    if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) for g in globs):
        raise ConfigError(
            f"config.freeze must be parameter-path globs such as ('features/*',), got {globs!r}"
        )
    return list(globs)


def create_model(
    config: ml_collections.ConfigDict, num_classes: int, in_channels: int
) -> nnx.Module:
    """Build ``config.model`` (a registry name) with ``config.model_options``, in training mode.

    The trainer sets ``num_classes``, ``compute`` (``config.compute``), ``rngs`` (from
    ``config.seed``) and, where the builder takes them, ``in_channels`` and ``dtype``
    (``config.dtype``); ``config.freeze`` globs are applied.
    """
    entry = registry.get(config.model)
    options = dict(config.get("model_options", {}) or {})
    if options.get("head_options") is not None:
        options["head_options"] = dict(options["head_options"])
    params = entry.parameters()
    _check_options(config, options, params)
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "compute": ops.Policy.parse(config.get("compute", "auto")),
        "rngs": nnx.Rngs(params=config.seed, dropout=config.seed + 1),
    }
    for key, value in (("in_channels", in_channels), ("dtype", _dtype(config))):
        if params is None or key in params:
            kwargs[key] = value
    model = entry(**kwargs, **options)
    globs = _freeze_globs(config)
    if globs:
        freeze(model, globs)
    model.train()
    return model


def init_state(
    config: ml_collections.ConfigDict,
    num_classes: int,
    in_channels: int,
    tx: optax.GradientTransformation,
) -> tuple[nnx.GraphDef, nnx.GraphDef, Callable[[], TrainState]]:
    """``(train_graphdef, eval_graphdef, make)``: ``make()`` builds a fresh TrainState
    (jit-able)."""
    abstract = nnx.eval_shape(lambda: create_model(config, num_classes, in_channels))
    graphdef = split_model(abstract)[0]
    abstract.eval()
    eval_graphdef = split_model(abstract)[0]

    def make() -> TrainState:
        model = create_model(config, num_classes, in_channels)
        _, params, frozen, batch_stats, rngs = split_model(model)
        return TrainState(
            jnp.zeros((), jnp.int32), params, frozen, batch_stats, rngs, tx.init(params)
        )

    return graphdef, eval_graphdef, make


def nbytes(tree: Any) -> int:
    """Bytes of all array leaves of ``tree`` (concrete or ``ShapeDtypeStruct``): one checkpoint's
    size."""
    total = 0
    for x in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            total += 8 * int(np.prod(x.shape))  # stored as its key data (2 x uint32)
        else:
            total += int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    return total
