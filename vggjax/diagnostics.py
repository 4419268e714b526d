"""Per-layer training diagnostics: gradient norms, weight and activation statistics, dead ReLUs.

The statistics are computed *inside* the jitted train step (pure ``jnp``, no host
callbacks) from the three things the step already has: the parameters, their gradients
and the ``feats`` dict of the forward pass (``model(x, return_features=True)``). They come
back as one flat mapping of float32 scalars with stable string keys, so a trainer can log
them with its other metrics every N steps::

    grad_norm/features/conv1_1/kernel   L2 norm of one gradient tensor
    grad_norm/features/conv1_1          L2 norm over all of that layer's gradient tensors
    global_grad_norm                    L2 norm over every gradient tensor
    weight_mean/features/conv1_1        mean of the layer's kernel
    weight_var/features/conv1_1         variance of the layer's kernel
    act_mean/relu1_1, act_std/relu1_1   mean / standard deviation of a feats entry
    zero_frac/relu1_1                   fraction of exactly-zero activations
    dead_frac/relu1_1                   fraction of channels that are 0 for every example and
                                        position

The mapping is a :class:`collections.OrderedDict` in *network order* (the order the
forward pass ran, as recorded by ``feats``); ``jax.jit`` keeps an ``OrderedDict``'s order
(it sorts plain dicts), so host code can plot a statistic against layer depth with
:func:`by_layer`. The same sorting hits ``feats`` itself when it leaves a transform as a
plain dict (``jax.grad``/``nnx.grad`` ``has_aux`` output, a ``jit`` result): return it as
``collections.OrderedDict(feats)`` from the loss function, or pass
``order=feature_order(model, x)``. Host-side helpers turn the result into Python floats
(:func:`to_python`) and a log table (:func:`summarize_table`); :func:`first_nonfinite`
and :func:`layer_names` let a NaN guard name the offending tensor.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Callable, Collection, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ReluSpec = Union[Collection[str], Callable[[str], bool], None]

# The trailing attribute a Variable contributes to a key path (``nnx.State`` leaves are
# ``Param`` objects whose array sits in ``.value``); it names nothing in the network.
_VARIABLE_ATTRS = ("value", "raw_value")

# Default ReLU-output detector: a "_"-separated token starting with "relu" covers the
# backbone (``relu3_2``), the heads (``relu6``, ``head_relu1``, ``score_relu``) and the seed
# nets (``block1_relu``), but not ``score_none`` or ``conv1_1``.
_RELU_RE = re.compile(r"(?:^|_)relu")
_BN_RE = re.compile(r"(?:^|_)bn\d")


def default_is_relu(name: str) -> bool:
    """True for feats names that hold a ReLU output (``relu1_1``, ``relu6``, ``score_relu``,
    ``head_relu1``)."""
    return bool(_RELU_RE.search(name))


def is_batch_norm(name: str) -> bool:
    """True for feats names that hold a BatchNorm output (``bn5_1``, ``head_bn1``)."""
    return bool(_BN_RE.search(name))


# ----------------------------------------------------------------------------- pytree paths


def _key_name(key: Any) -> str:
    tu = jax.tree_util
    if isinstance(key, tu.DictKey):
        return str(key.key)
    if isinstance(key, tu.GetAttrKey):
        return key.name
    if isinstance(key, tu.SequenceKey):
        return str(key.idx)
    if isinstance(key, tu.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _flatten(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Leaves of ``tree`` with their paths as string tuples, in ``jax.tree_util`` leaf order.

    Works the same for an ``nnx.State`` (whose key paths end in a ``.value`` attribute that
    is dropped here) and for the plain nested dict ``nnx.to_pure_dict`` gives, so both
    produce ``("features", "conv1_1", "kernel")``.
    """
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if (
            len(path) > 1
            and isinstance(path[-1], jax.tree_util.GetAttrKey)
            and path[-1].name in _VARIABLE_ATTRS
        ):
            path = path[:-1]
        out.append((tuple(_key_name(k) for k in path), leaf))
    return out


def _split(path: tuple[str, ...]) -> tuple[str, str | None]:
    """``("features", "conv1_1", "kernel")`` → ``("features/conv1_1", "kernel")``; a bare leaf is
    its own layer."""
    if len(path) == 1:
        return path[0], None
    return "/".join(path[:-1]), path[-1]


def layer_names(grads: Any) -> list[str]:
    """Host-side: the ``"/"``-joined path of every leaf of ``grads`` (e.g.
    ``"features/conv1_1/kernel"``).

    The list is in ``jax.tree_util`` leaf order, the order :func:`first_nonfinite` indexes,
    so ``layer_names(grads)[int(index)]`` names the first non-finite gradient tensor. Works
    on an ``nnx.State``, a plain nested dict, or abstract shapes (``jax.eval_shape`` output).
    """
    return ["/".join(path) for path, _ in _flatten(grads)]


def _feat_for(layer: Sequence[str], feat_names: Collection[str]) -> str | None:
    """The feats entry a parameter layer writes, or None.

    Tries the ``"_"``-joined suffixes of the layer path, longest first, because the models
    name feats after the attribute (``features/conv1_1`` → ``conv1_1``) and sometimes prefix
    the parent (``head/conv1`` → ``head_conv1``, ``block1/conv`` → ``block1_conv``).
    """
    for k in range(len(layer)):
        name = "_".join(layer[k:])
        if name in feat_names:
            return name
    return None


def _network_order(layers: list[str], feat_names: Sequence[str]) -> list[str]:
    """Sort parameter layers (given in leaf order) by the position of the feats entry they write.

    Pytree flattening sorts dict keys, which would put every ``bn*`` before every ``conv*``;
    ``feats`` records execution order, so it decides. A layer with no feats entry stays
    right after its leaf-order predecessor.
    """
    pos = {name: i for i, name in enumerate(feat_names)}
    ranked, prev = [], -1
    for i, layer in enumerate(layers):
        feat = _feat_for(layer.split("/"), pos)
        prev = pos[feat] if feat is not None else prev
        ranked.append((prev, i, layer))
    return [layer for _, _, layer in sorted(ranked)]


# ----------------------------------------------------------------------------- in-jit statistics


def _sumsq(x: Array) -> Array:
    # float32 accumulation: bf16 sums of squares lose all precision over a big kernel.
    x = jnp.asarray(x).astype(jnp.float32)
    return jnp.sum(x * x)


def global_grad_norm(grads: Any) -> Array:
    """L2 norm over every leaf of ``grads`` (any pytree of arrays): a float32 scalar, same as
    ``optax.global_norm``."""
    leaves = jax.tree_util.tree_leaves(grads)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(_sumsq(g) for g in leaves))


def finite_flags(leaves: Sequence[Array]) -> Array:
    """One bool per array of ``leaves`` (jit-able): True where every value is finite (no NaN, no
    ±inf)."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def first_nonfinite(grads: Any) -> tuple[Array, Array]:
    """Find the first gradient tensor holding a NaN or ±inf, inside jit.

    Returns ``(found, index)``: a bool scalar, and an int32 scalar indexing the leaves in
    ``jax.tree_util`` order (name it on the host with ``layer_names(grads)[index]``), or
    ``-1`` when every value is finite. Costs one ``isfinite`` reduction per tensor.
    """
    leaves = jax.tree_util.tree_leaves(grads)
    if not leaves:
        return jnp.zeros((), bool), jnp.full((), -1, jnp.int32)
    bad = ~finite_flags(leaves)
    found = jnp.any(bad)
    index = jnp.where(found, jnp.argmax(bad).astype(jnp.int32), -1)
    return found, index


def _pmean(x: Array, axis_name: str | None) -> Array:
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _act_stats(x: Array, relu: bool, axis_name: str | None) -> dict[str, Array]:
    """mean / std / zero_frac (and dead_frac for ReLU outputs) of one activation tensor."""
    x = jnp.asarray(x).astype(jnp.float32)
    # Two passes (mean, then mean squared deviation) rather than E[x²]−E[x]², which
    # cancels catastrophically for large-mean activations (e.g. constant-5 init).
    mean = _pmean(jnp.mean(x), axis_name)
    var = _pmean(jnp.mean(jnp.square(x - mean)), axis_name)
    out = {
        "act_mean": mean,
        "act_std": jnp.sqrt(var),
        "zero_frac": _pmean(jnp.mean((x == 0).astype(jnp.float32)), axis_name),
    }
    if relu:
        # A unit is a channel (the last axis, NHWC / (N, C)); it is dead when it outputs
        # exactly 0 for every example and position. max|x| per channel, maxed over devices
        # under pmap, is 0 exactly then.
        axes = tuple(range(x.ndim - 1)) if x.ndim > 1 else None
        peak = jnp.max(jnp.abs(x), axis=axes)
        if axis_name is not None:
            peak = jax.lax.pmax(peak, axis_name)
        out["dead_frac"] = jnp.mean((peak == 0).astype(jnp.float32))
    return out


def _relu_predicate(relu_names: ReluSpec) -> Callable[[str], bool]:
    if relu_names is None:
        return default_is_relu
    if callable(relu_names):
        return relu_names
    if isinstance(relu_names, str):  # one name, not a set of characters
        relu_names = (relu_names,)
    names = frozenset(relu_names)
    return names.__contains__


def layer_stats(
    params: Any,
    grads: Any,
    feats: Mapping[str, Array] | None,
    *,
    relu_names: ReluSpec = None,
    weight_names: Collection[str] = ("kernel",),
    order: Sequence[str] | None = None,
    axis_name: str | None = None,
) -> "collections.OrderedDict[str, jax.Array]":
    """Per-layer statistics as a flat ``OrderedDict`` of float32 scalars, for use inside jit.

    ``params`` and ``grads`` are pytrees with the same paths (an ``nnx.State`` of
    ``nnx.Param`` or a plain nested dict; either may be None to skip its statistics);
    ``feats`` is the name → activation dict of ``model(x, return_features=True)`` (None to
    skip). Keys: ``grad_norm/<layer>/<leaf>`` and ``grad_norm/<layer>`` (L2 norms, units of
    the gradient), ``global_grad_norm``, ``weight_mean/<layer>`` and ``weight_var/<layer>``
    for leaves named in ``weight_names`` (``.../<leaf>`` appended when a layer has several),
    ``act_mean/<feat>``, ``act_std/<feat>`` (population std over batch, space and channels)
    and ``zero_frac/<feat>`` (fraction in [0, 1] of exactly-zero values) for every feats
    entry, and ``dead_frac/<feat>`` (fraction in [0, 1] of channels that are zero for every
    example and position) for the ReLU outputs chosen by ``relu_names`` (a set of names, a
    predicate, or None for :func:`default_is_relu`). ``<layer>`` is the "/"-joined module
    path (``features/conv1_1``, ``head/fc6``). Entries are grouped by statistic and, within
    a group, in network order: ``order`` (feats names in execution order, see
    :func:`feature_order`) or else the iteration order of ``feats`` — which JAX transforms
    sort when ``feats`` is a plain dict returned through ``jax.grad(has_aux=True)`` or
    ``jit``, so return it as an ``OrderedDict`` or pass ``order``. Under ``jax.pmap``
    pass ``axis_name`` so activation statistics cover the global batch (grads should
    already be averaged). Cost: a few reductions per tensor, no extra forward pass.
    """
    is_relu = _relu_predicate(relu_names)
    feats = {k: v for k, v in (feats or {}).items() if v is not None and hasattr(v, "ndim")}
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        # Names missing from ``order`` keep their relative order, after the listed ones.
        feats = dict(sorted(feats.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    stats: collections.OrderedDict[str, Array] = collections.OrderedDict()

    if grads is not None:
        leaves: dict[str, list[tuple[str | None, Array]]] = {}
        for path, g in _flatten(grads):
            layer, leaf = _split(path)
            leaves.setdefault(layer, []).append((leaf, g))
        total = []
        for layer in _network_order(list(leaves), list(feats)):
            sq = [(leaf, _sumsq(g)) for leaf, g in leaves[layer]]
            for leaf, s in sq:
                if leaf is not None:
                    stats[f"grad_norm/{layer}/{leaf}"] = jnp.sqrt(s)
            layer_sq = sum(s for _, s in sq)
            stats[f"grad_norm/{layer}"] = jnp.sqrt(layer_sq)
            total.append(layer_sq)
        stats["global_grad_norm"] = jnp.sqrt(sum(total)) if total else jnp.zeros((), jnp.float32)

    if params is not None:
        weights: dict[str, list[tuple[str, Array]]] = {}
        for path, w in _flatten(params):
            layer, leaf = _split(path)
            if leaf is not None and leaf in weight_names:
                weights.setdefault(layer, []).append((leaf, w))
        means, variances = collections.OrderedDict(), collections.OrderedDict()
        for layer in _network_order(list(weights), list(feats)):
            for leaf, w in weights[layer]:
                key = layer if len(weights[layer]) == 1 else f"{layer}/{leaf}"
                w = jnp.asarray(w).astype(jnp.float32)
                means[key] = jnp.mean(w)
                variances[key] = jnp.var(w)
        stats.update((f"weight_mean/{k}", v) for k, v in means.items())
        stats.update((f"weight_var/{k}", v) for k, v in variances.items())

    per_feat = {name: _act_stats(x, is_relu(name), axis_name) for name, x in feats.items()}
    for stat in ("act_mean", "act_std", "zero_frac", "dead_frac"):
        for name, s in per_feat.items():
            if stat in s:
                stats[f"{stat}/{name}"] = s[stat]
    return stats


# ----------------------------------------------------------------------------- host side


def feature_order(model: Any, x: Any) -> list[str]:
    """Host-side: the names of ``model``'s feats entries in execution order, without running it.

    ``x`` is an input array or ``jax.ShapeDtypeStruct`` of shape ``(N, H, W, C)``. The model
    is traced abstractly once (``jax.eval_shape``: no FLOPs, nothing mutated) and the
    names are read while the forward pass fills its dict, before any pytree flattening
    could sort them. Pass the result as ``layer_stats(..., order=...)``.
    """
    from flax import nnx  # models are nnx modules; the in-jit statistics need no flax

    graphdef, state = nnx.split(model)
    names: list[str] = []

    def trace(state, x):
        _, feats = nnx.merge(graphdef, state)(x, return_features=True)
        names.extend(feats)  # a trace-time side effect: the dict's insertion order

    jax.eval_shape(trace, state, x)
    return names


def kernel_order(model: Any, x: Any) -> list[str]:
    """Host-side: the paths of ``model``'s weight kernels (``".../kernel"``) in execution order.

    ``x`` is an input array or ``jax.ShapeDtypeStruct`` of shape ``(N, H, W, C)``. Each
    kernel is ranked by the first feats entry its layer writes (see :func:`feature_order`;
    a shared module's entries ``name#k`` count from their first use); kernels that write no
    feats entry go last. Use it to plot per-layer statistics against depth.
    """
    from flax import nnx

    feats = feature_order(model, x)
    first: dict[str, int] = {}
    for i, f in enumerate(feats):
        first.setdefault(f.split("#")[0], i)
    paths = [p for p in layer_names(nnx.state(model, nnx.Param)) if p.endswith("/kernel")]

    def rank(path: str) -> int:
        feat = _feat_for(path.split("/")[:-1], first)
        return first[feat] if feat is not None else len(feats)

    return sorted(paths, key=rank)


def to_python(stats: Mapping[str, Any]) -> dict[str, float]:
    """Host-side: fetch ``stats`` (device scalars) and return ``{key: float}`` in the same order.

    One ``jax.device_get`` for the whole mapping (a single transfer, not one per key).
    Values with a leading device axis (``jax.pmap`` outputs, identical on every device
    after the step's ``pmean``) are reduced to their first entry.
    """
    host = jax.device_get(dict(stats))
    out = {}
    for key in stats:
        v = np.asarray(host[key])
        out[key] = float(v.reshape(-1)[0]) if v.ndim else float(v)
    return out


def by_layer(
    stats: Mapping[str, Any],
    prefix: str,
    *,
    leaves: bool = False,
    order: Sequence[str] | None = None,
) -> list[tuple[str, float]]:
    """Host-side: the ``(layer, value)`` pairs of one statistic, in network order.

    ``prefix`` is a statistic name (``"grad_norm"``, ``"weight_var"``, ``"act_std"``,
    ``"dead_frac"``, …); ``layer`` is the rest of the key (``"features/conv1_1"``,
    ``"relu1_1"``). For nested keys (``grad_norm``) the per-layer totals are returned, or
    the per-tensor entries (``"features/conv1_1/kernel"``) with ``leaves=True``. The order
    is that of ``stats`` (network order as :func:`layer_stats` built it — keep its
    ``OrderedDict`` intact, since merging into a plain dict inside jit sorts the keys), or
    that of ``order`` when given (names not listed go last, in ``stats`` order).
    """
    head = prefix.rstrip("/") + "/"
    items = [(k[len(head) :], v) for k, v in stats.items() if k.startswith(head)]
    names = [n for n, _ in items]
    # A key is a layer total when another key extends it by "/<leaf>".
    parents = {n.rsplit("/", 1)[0] for n in names if "/" in n} & set(names)
    children = {
        n for n in names if n not in parents and "/" in n and n.rsplit("/", 1)[0] in parents
    }
    if leaves:
        items = [(n, v) for n, v in items if n not in parents]
    else:
        items = [(n, v) for n, v in items if n not in children]
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        items = sorted(items, key=lambda nv: rank.get(nv[0], len(rank)))
    values = to_python(dict(items))
    return [(n, values[n]) for n, _ in items]


def _fmt(v: float | None, percent: bool = False) -> str:
    if v is None:
        return ""
    if percent:
        return f"{100 * v:.1f}"
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def summarize_table(stats: Mapping[str, Any], *, order: Sequence[str] | None = None) -> str:
    """Host-side: a compact per-layer table of :func:`layer_stats` output for logs.

    One row per feats entry in network order (``order``, a list of feats names, overrides
    it) — a parameter layer shares the row of the activation it writes (``conv1_1`` shows
    the conv's gradient norm and kernel mean/variance next to its output's mean/std);
    parameter layers without a feats entry get their own row. Columns: layer, grad norm
    (L2), weight mean, weight var, act mean, act std, zero % and dead % (ReLU outputs only,
    in percent). Returns the table as a string, ending with the global gradient norm.
    """
    vals = to_python(stats)
    grad = dict(by_layer(vals, "grad_norm"))
    wmean, wvar = dict(by_layer(vals, "weight_mean")), dict(by_layer(vals, "weight_var"))
    feat_rows = [n for n, _ in by_layer(vals, "act_mean", order=order)]
    feat_set = set(feat_rows)
    param_layers = list(dict.fromkeys(list(grad) + list(wmean)))

    rows: list[tuple[str, str | None, str | None]] = [
        (f, f, None) for f in feat_rows
    ]  # (label, feat, layer)
    where = {f: i for i, f in enumerate(feat_rows)}
    last = -1
    for layer in param_layers:
        feat = _feat_for(layer.split("/"), feat_set)
        if feat is not None and rows[where[feat]][2] is None:
            rows[where[feat]] = (feat, feat, layer)
            last = where[feat]
        else:
            # No activation of its own: list it right after the previous parameter layer.
            last += 1
            rows.insert(last, (layer, None, layer))
            where = {r[1]: i for i, r in enumerate(rows) if r[1] is not None}

    header = ("layer", "grad norm", "w mean", "w var", "act mean", "act std", "zero %", "dead %")
    table = [header]
    for label, feat, layer in rows:
        get = lambda d, k: d.get(k) if k is not None else None  # noqa: E731
        table.append(
            (
                label,
                _fmt(get(grad, layer)),
                _fmt(get(wmean, layer)),
                _fmt(get(wvar, layer)),
                _fmt(get(vals, feat and f"act_mean/{feat}")),
                _fmt(get(vals, feat and f"act_std/{feat}")),
                _fmt(get(vals, feat and f"zero_frac/{feat}"), percent=True),
                _fmt(get(vals, feat and f"dead_frac/{feat}"), percent=True),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    if "global_grad_norm" in vals:
        lines.append(f"global grad norm: {_fmt(vals['global_grad_norm'])}")
    return "\n".join(lines)


__all__ = [
    "default_is_relu",
    "feature_order",
    "layer_stats",
    "global_grad_norm",
    "finite_flags",
    "first_nonfinite",
    "layer_names",
    "to_python",
    "by_layer",
    "summarize_table",
]
