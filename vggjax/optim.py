"""Optax builders for the trainer: SGD (+momentum, Nesterov), weight decay, schedules.

One entry point, :func:`make_optimizer`, turns a flat optimiser config (a dict or an
``ml_collections.ConfigDict``; fields and defaults in :data:`DEFAULTS`) into an
``optax.GradientTransformation``. The transformation is a chain

    clip_by_global_norm → [coupled weight decay] → momentum → [decoupled weight decay]
    → scale by −learning-rate

and its PyTorch counterparts are exact: with ``weight_decay_mode="coupled"`` it is
``torch.optim.SGD(lr, momentum, nesterov=..., weight_decay=...)`` (``wd·w`` is added to
the gradient before the momentum buffer), and coupled ``weight_decay = 2λ`` is the same as
adding the book's penalty ``λ·Σw²`` (:func:`vggjax.losses.l2_penalty`) to the loss. With
``"decoupled"`` the decay ``lr·wd·w`` is applied after momentum and never enters the
momentum buffer (SGDW / AdamW style, the step is ``w ← w − lr·(m + wd·w)``).

The learning rate and the reduce-on-plateau state live in the optimiser state (an
:class:`LRState` inside the chain), so they are checkpointed with it. Read the rate
with :func:`current_lr`; after every evaluation call :func:`plateau_update` (a pure,
jittable function; a no-op unless ``schedule == "plateau"``).

Frozen parameters: models keep frozen weights in a Variable type other than
``nnx.Param``; split the model with ``nnx.split(model, nnx.Param, ...)`` and pass only the
``nnx.Param`` state here, so frozen weights never reach the optimiser (no update, no
decay, no momentum buffer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vggjax.errors import ConfigError, one_of

# Every optimiser field :func:`make_optimizer` reads, with its default. A config may
# carry other (non-optimiser) fields too; they are ignored.
DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.01,  # peak / base learning rate
    "schedule": "constant",  # one of SCHEDULES
    "momentum": 0.0,  # 0 = plain SGD (no momentum buffer)
    "nesterov": False,
    "weight_decay": 0.0,
    "weight_decay_mode": "coupled",  # one of WEIGHT_DECAY_MODES
    "weight_decay_mask": "all",  # one of WEIGHT_DECAY_MASKS
    "grad_clip_norm": 0.0,  # max global gradient norm; 0 or None = off
    "warmup_epochs": 0.0,  # linear warm-up from 0 (any schedule; float epochs allowed)
    # "step": multiply by lr_decay_factor every lr_step_every units (torch StepLR).
    # "piecewise": multiply by lr_decay_factor at each of lr_boundaries (torch MultiStepLR).
    "lr_boundaries": (),
    "lr_step_every": 30,
    "lr_boundaries_unit": "epochs",  # "epochs" or "steps"; for lr_boundaries and lr_step_every
    "lr_decay_factor": 0.1,
    "end_learning_rate": 0.0,  # "warmup_cosine": value reached at the last step
    # "plateau": torch ReduceLROnPlateau semantics, one call of plateau_update per evaluation.
    "plateau_mode": "max",  # "max" (e.g. accuracy) or "min" (e.g. loss)
    "plateau_factor": 0.1,
    "plateau_patience": 10,  # evaluations without improvement that are tolerated
    "plateau_threshold": 1e-4,  # relative improvement needed to count as better
    "plateau_cooldown": 0,  # evaluations to wait after a reduction before counting again
    "plateau_min_lr": 0.0,
}

SCHEDULES = ("constant", "step", "piecewise", "warmup_cosine", "plateau")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
WEIGHT_DECAY_MASKS = ("all", "no_bias_norm")
BOUNDARY_UNITS = ("epochs", "steps")
PLATEAU_MODES = ("max", "min")

# Leaf names (last path key) that "no_bias_norm" leaves undecayed: biases and
# normalisation scales/offsets (Flax names BatchNorm/LayerNorm γ "scale", β "bias").
_NO_DECAY_NAMES = frozenset({"bias", "scale"})
# Keys that wrap a value rather than name a parameter (nnx.Variable's pytree child).
_WRAPPER_KEYS = frozenset({"value", "raw_value"})
# torch ReduceLROnPlateau ignores a reduction smaller than this (its ``eps``).
_PLATEAU_EPS = 1e-8


def default_config():
    """Return the optimiser fields of :data:`DEFAULTS` as an ``ml_collections.ConfigDict``.

    Meant for configs (``config.optim = vggjax.optim.default_config()``) so that every
    field exists with the right type and ``--config.optim.key=value`` overrides work.
    """
    import ml_collections

    return ml_collections.ConfigDict(dict(DEFAULTS))


def _get(cfg: Any, name: str) -> Any:
    """Read field ``name`` from a dict-like or attribute-style config, else its default."""
    if cfg is None:
        return DEFAULTS[name]
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(name, DEFAULTS[name])
    else:
        value = getattr(cfg, name, DEFAULTS[name])
    return DEFAULTS[name] if value is None and name != "grad_clip_norm" else value


def _check_name(kind: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise one_of(kind, value, valid)
    return value


def _number(cfg: Any, name: str, minimum: float | None = 0.0) -> float:
    value = _get(cfg, name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and not value >= minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------- masks


def _path_name(entry: Any) -> str | None:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    return None  # sequence indices and flattened keys name no parameter


def leaf_name(path: tuple[Any, ...]) -> str:
    """Return the parameter name a pytree path ends in (``"kernel"``, ``"bias"``, ...).

    Works for plain nested dicts and for ``nnx.State`` (whose leaves sit under the
    Variable's ``value`` attribute, which is skipped). Returns ``""`` if none.
    """
    for entry in reversed(path):
        name = _path_name(entry)
        if name is not None and name not in _WRAPPER_KEYS:
            return name
    return ""


def decay_mask(params: Any, mode: str = "all") -> Any:
    """Return a pytree of bools, like ``params``: True where weight decay applies.

    ``mode="all"`` decays every leaf (PyTorch's default). ``"no_bias_norm"`` excludes
    leaves named ``bias`` or ``scale`` (biases, BatchNorm/LayerNorm γ and β) and every
    leaf with ``ndim <= 1``. ``params`` may be a dict of arrays or an ``nnx.State``.
    """
    _check_name("weight_decay_mask", mode, WEIGHT_DECAY_MASKS)
    if mode == "all":
        return jax.tree.map(lambda _: True, params)

    def keep(path, leaf) -> bool:
        return not (leaf_name(path) in _NO_DECAY_NAMES or jnp.ndim(leaf) <= 1)

    return jax.tree_util.tree_map_with_path(keep, params)


# ----------------------------------------------------------------------- schedules


def _to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    return int(round(float(value) * steps_per_epoch)) if unit == "epochs" else int(value)


def warmup_steps(cfg: Any, steps_per_epoch: int) -> int:
    """The steps of ``cfg``'s linear warm-up (0 without one)."""
    return _to_steps(_number(cfg, "warmup_epochs"), "epochs", int(steps_per_epoch))


def make_schedule(cfg: Any, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Return the learning-rate schedule ``step -> lr`` (before any plateau reduction).

    ``step`` counts optimiser updates from 0; update ``s`` belongs to epoch
    ``s // steps_per_epoch``, so an epoch boundary ``b`` takes effect at step
    ``b * steps_per_epoch`` (as torch's per-epoch ``scheduler.step()``). A linear warm-up
    over ``warmup_epochs`` (from 0 at step 0 to the schedule's value) multiplies any
    schedule; "warmup_cosine" then decays from ``learning_rate`` at the end of warm-up to
    ``end_learning_rate`` at ``total_steps``. "plateau" is constant here.
    """
    name = _check_name("schedule", _get(cfg, "schedule"), SCHEDULES)
    lr = _number(cfg, "learning_rate")
    steps_per_epoch = int(steps_per_epoch)
    total_steps = int(total_steps)
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    unit = _check_name("lr_boundaries_unit", _get(cfg, "lr_boundaries_unit"), BOUNDARY_UNITS)
    factor = _number(cfg, "lr_decay_factor")
    warmup = warmup_steps(cfg, steps_per_epoch)

    if name in ("constant", "plateau"):
        main = lambda count: jnp.full((), lr, jnp.float32)  # noqa: E731
    elif name == "step":
        every = _to_steps(_number(cfg, "lr_step_every"), unit, steps_per_epoch)
        if every < 1:
            raise ConfigError(f"lr_step_every must be at least one step, got {every} steps")

        def main(count):
            return lr * factor ** (count // every).astype(jnp.float32)
    elif name == "piecewise":
        raw = _get(cfg, "lr_boundaries")
        if isinstance(raw, (int, float)):
            raw = (raw,)
        bounds = jnp.asarray(sorted(_to_steps(b, unit, steps_per_epoch) for b in raw), jnp.int32)

        def main(count):
            passed = jnp.sum(count >= bounds).astype(jnp.float32)
            return lr * factor**passed
    else:  # warmup_cosine
        end = _number(cfg, "end_learning_rate")
        span = total_steps - warmup
        if span < 1:
            raise ConfigError(
                f"warmup_cosine needs total_steps ({total_steps}) > warm-up steps ({warmup}); "
                "lower warmup_epochs or train longer"
            )

        def main(count):
            t = jnp.clip((count - warmup).astype(jnp.float32) / span, 0.0, 1.0)
            return end + (lr - end) * 0.5 * (1.0 + jnp.cos(math.pi * t))

    def schedule(count):
        count = jnp.asarray(count, jnp.int32)
        value = jnp.asarray(main(count), jnp.float32)
        if warmup > 0:
            value = value * jnp.minimum(1.0, count.astype(jnp.float32) / warmup)
        return value

    return schedule


# ------------------------------------------------------------- lr + plateau state


class PlateauState(NamedTuple):
    """Reduce-on-plateau bookkeeping (all scalar arrays, checkpointed with the optimiser)."""

    scale: jax.Array  # float32, multiplies the schedule; 1 until the first reduction
    best: jax.Array  # float32, best metric so far (∓float32 max before the first evaluation)
    num_bad: jax.Array  # int32, evaluations since the last improvement
    cooldown: jax.Array  # int32, evaluations left in the cool-down after a reduction


class LRState(NamedTuple):
    """State of the final ``scale by −lr`` step of the chain."""

    count: jax.Array  # int32, number of updates applied
    learning_rate: jax.Array  # float32, lr used by the last update (step 0's before any)
    plateau: PlateauState


def _scale_by_lr(schedule: optax.Schedule, plateau_mode: str) -> optax.GradientTransformation:
    """Multiply updates by ``−schedule(count) · plateau.scale``, recording the lr used."""

    def init_fn(params):
        del params
        # The largest finite float32 rather than inf: checkpoints refuse non-finite state.
        worst = float(jnp.finfo(jnp.float32).max)
        best = -worst if plateau_mode == "max" else worst
        return LRState(
            count=jnp.zeros((), jnp.int32),
            learning_rate=jnp.asarray(schedule(0), jnp.float32),
            plateau=PlateauState(
                scale=jnp.ones((), jnp.float32),
                best=jnp.asarray(best, jnp.float32),
                num_bad=jnp.zeros((), jnp.int32),
                cooldown=jnp.zeros((), jnp.int32),
            ),
        )

    def update_fn(updates, state, params=None):
        del params
        lr = schedule(state.count) * state.plateau.scale
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        new_state = LRState(optax.safe_increment(state.count), lr, state.plateau)
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _is_lr_state(x: Any) -> bool:
    return isinstance(x, LRState)


def _unwrap(x: Any) -> Any:
    # nnx.Optimizer wraps every opt-state array in an nnx.Variable (OptArray).
    return x[...] if isinstance(x, nnx.Variable) else x


def _rewrap(old: Any, new: jax.Array) -> Any:
    return old.replace(new) if isinstance(old, nnx.Variable) else new


def _find_lr_state(opt_state: Any) -> LRState:
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_lr_state) if _is_lr_state(x)]
    if len(found) != 1:
        raise ConfigError(
            "this optimizer state was not built by vggjax.optim.make_optimizer; "
            "build the optimizer with make_optimizer"
        )
    return found[0]


def current_lr(opt_state: Any) -> jax.Array:
    """Return the learning rate (float32 scalar array) used by the most recent update.

    Before the first update it is the rate the first update will use. It includes the
    plateau reduction; a reduction made by :func:`plateau_update` shows from the next
    update on. Works inside ``jit``; call ``float(...)`` on it for logging.
    """
    return _unwrap(_find_lr_state(opt_state).learning_rate)


def plateau_scale(opt_state: Any) -> jax.Array:
    """Return the plateau multiplier on the schedule (1.0 until the first reduction)."""
    return _unwrap(_find_lr_state(opt_state).plateau.scale)


def plateau_update(opt_state: Any, metric: jax.typing.ArrayLike, cfg: Any) -> Any:
    """Feed one evaluation ``metric`` to reduce-on-plateau; return the new optimiser state.

    Semantics are torch ``ReduceLROnPlateau(mode, factor, patience, threshold,
    threshold_mode="rel", cooldown, min_lr)``: a metric is better if it beats the best by
    the relative ``plateau_threshold``; once more than ``plateau_patience`` evaluations in
    a row are not better, the lr is multiplied by ``plateau_factor`` (not below
    ``plateau_min_lr``) and the count restarts after ``plateau_cooldown`` evaluations.
    With patience p the first reduction is at the (p+1)-th consecutive bad evaluation.
    Pure and jittable (``cfg`` is read as Python constants); returns ``opt_state``
    unchanged unless ``cfg.schedule == "plateau"``, so the trainer may call it always.
    Also accepts ``nnx.Optimizer(...).opt_state`` (Variable-wrapped leaves); assign the
    result back (``optimizer.opt_state = plateau_update(optimizer.opt_state, m, cfg)``).
    """
    if _check_name("schedule", _get(cfg, "schedule"), SCHEDULES) != "plateau":
        return opt_state
    mode = _check_name("plateau_mode", _get(cfg, "plateau_mode"), PLATEAU_MODES)
    factor = _number(cfg, "plateau_factor")
    if not 0.0 < factor < 1.0:
        raise ConfigError(f"plateau_factor must be in (0, 1), got {factor}")
    patience = int(_number(cfg, "plateau_patience"))
    threshold = _number(cfg, "plateau_threshold")
    cooldown = int(_number(cfg, "plateau_cooldown"))
    base_lr = _number(cfg, "learning_rate")
    min_lr = _number(cfg, "plateau_min_lr")
    metric = jnp.asarray(metric, jnp.float32)

    def step(state: LRState) -> LRState:
        wrapped = state.plateau
        p = PlateauState(*map(_unwrap, wrapped))
        if mode == "max":
            better = metric > p.best * (1.0 + threshold)
        else:
            better = metric < p.best * (1.0 - threshold)
        best = jnp.where(better, metric, p.best)
        num_bad = jnp.where(better, 0, p.num_bad + 1)
        in_cooldown = p.cooldown > 0
        cool = jnp.where(in_cooldown, p.cooldown - 1, p.cooldown)
        num_bad = jnp.where(in_cooldown, 0, num_bad)
        reduce = num_bad > patience
        old_lr = base_lr * p.scale
        new_lr = jnp.maximum(old_lr * factor, min_lr)
        changes = reduce & (old_lr - new_lr > _PLATEAU_EPS)
        scale = jnp.where(changes, new_lr / base_lr if base_lr > 0 else p.scale, p.scale)
        plateau = PlateauState(
            scale=scale.astype(jnp.float32),
            best=best.astype(jnp.float32),
            num_bad=jnp.where(reduce, 0, num_bad).astype(jnp.int32),
            cooldown=jnp.where(reduce, cooldown, cool).astype(jnp.int32),
        )
        return state._replace(plateau=PlateauState(*map(_rewrap, wrapped, plateau)))

    _find_lr_state(opt_state)  # one clear error if the state is foreign
    return jax.tree.map(
        lambda x: step(x) if _is_lr_state(x) else x, opt_state, is_leaf=_is_lr_state
    )


# ------------------------------------------------------------- "no zero_grad"


class AccumulateState(NamedTuple):
    """Running sum of every gradient seen so far (same pytree as the params)."""

    grad_sum: Any


def accumulate_gradients() -> optax.GradientTransformation:
    """Pass on the running sum of all gradients so far: PyTorch without ``zero_grad()``.

    PyTorch's ``loss.backward()`` *adds* into ``param.grad``; a loop that never calls
    ``optimizer.zero_grad()`` therefore hands the optimiser ``g_1 + … + g_t`` at step
    ``t``. Chain this transformation *before* the optimiser, e.g.
    ``optax.chain(accumulate_gradients(), make_optimizer(cfg, ...))``, to reproduce such a
    loop exactly (coupled weight decay and momentum then act on the sum, as torch's SGD
    does on ``param.grad``). The state is one float32 buffer per parameter. Meant for
    reproducing that bug, not for training: a correct loop uses per-step gradients.
    """

    def init_fn(params):
        return AccumulateState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        grad_sum = jax.tree.map(jnp.add, state.grad_sum, updates)
        return grad_sum, AccumulateState(grad_sum)

    return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------------ builder


def make_optimizer(
    cfg: Any, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
    """Build the SGD optimiser described by ``cfg`` (fields and defaults: :data:`DEFAULTS`).

    ``steps_per_epoch`` (updates per epoch) converts epoch-valued fields to steps and
    ``total_steps`` is where "warmup_cosine" ends. Call ``tx.update(grads, opt_state,
    params)`` with ``params`` (weight decay reads them). ``params`` may be a dict of
    arrays or an ``nnx.State`` of ``nnx.Param`` (masks follow the path names). Raises
    :class:`~vggjax.errors.ConfigError` for unknown names or out-of-range values.
    """
    schedule = make_schedule(cfg, steps_per_epoch, total_steps)
    momentum = _number(cfg, "momentum")
    if momentum >= 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    nesterov = bool(_get(cfg, "nesterov"))
    if nesterov and momentum == 0.0:
        raise ConfigError("nesterov=True needs momentum > 0 (as in torch.optim.SGD)")
    wd = _number(cfg, "weight_decay")
    wd_mode = _check_name("weight_decay_mode", _get(cfg, "weight_decay_mode"), WEIGHT_DECAY_MODES)
    mask_mode = _check_name("weight_decay_mask", _get(cfg, "weight_decay_mask"), WEIGHT_DECAY_MASKS)
    clip = _get(cfg, "grad_clip_norm")
    clip = 0.0 if clip is None else _number(cfg, "grad_clip_norm")
    plateau_mode = _check_name("plateau_mode", _get(cfg, "plateau_mode"), PLATEAU_MODES)

    parts: list[optax.GradientTransformation] = []
    if clip > 0:
        # Before weight decay, like torch's clip_grad_norm_ on .grad then optimizer.step().
        parts.append(optax.clip_by_global_norm(clip))
    decay = None
    if wd > 0:
        mask = None if mask_mode == "all" else (lambda p: decay_mask(p, mask_mode))
        decay = optax.add_decayed_weights(wd, mask=mask)
    if decay is not None and wd_mode == "coupled":
        parts.append(decay)
    if momentum > 0:
        # optax.trace == torch SGD momentum with dampening 0 (first buffer = gradient).
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    if decay is not None and wd_mode == "decoupled":
        parts.append(decay)
    parts.append(_scale_by_lr(schedule, plateau_mode))
    return optax.chain(*parts)


__all__ = [
    "AccumulateState",
    "BOUNDARY_UNITS",
    "DEFAULTS",
    "LRState",
    "PLATEAU_MODES",
    "PlateauState",
    "SCHEDULES",
    "WEIGHT_DECAY_MASKS",
    "WEIGHT_DECAY_MODES",
    "accumulate_gradients",
    "current_lr",
    "decay_mask",
    "default_config",
    "leaf_name",
    "make_optimizer",
    "make_schedule",
    "plateau_scale",
    "plateau_update",
]
