"""A torchsummary-style table of a vggjax network, without allocating its weights.

``vggjax.summary(model, (1, 224, 224, 3))`` returns the table as a string;
:func:`summarize` returns the numbers as a :class:`Summary`. The forward pass is traced
abstractly (``jax.eval_shape``), so full-size models cost no memory: build them with
``nnx.eval_shape(lambda: vggjax.vgg16(rngs=nnx.Rngs(0)))`` and pass the abstract model.

Rows are the entries of the ``feats`` dict that every vggjax network records when called
with ``return_features=True`` (one per layer op, in execution order). A row's parameter
count is that of the module the name resolves to — the module whose path, joined by
``_``, ends the name (``conv1_1`` → ``features/conv1_1``, ``head_conv1`` →
``head/conv1``, ``block3_conv`` → ``block3/conv``); a ``#k`` suffix marks the k-th
application of a shared module, whose weights are counted on its first row only. Names
that resolve to no module (``relu1_1``, ``pool1``, ``flatten``) are parameter-free ops,
typed from their name. ``nnx.Param`` and :class:`~vggjax.freeze.Frozen` variables are
parameters (trainable and non-trainable); BatchNorm running statistics are not, as in
torchsummary. Memory figures follow torchsummary's formulas (forward/backward = 2 × the
bytes of every row's output) for the batch in ``input_shape``; FLOPs come from XLA's cost
analysis of the forward pass.

CLI: ``python -m vggjax.summary vgg16 [--input-size 224] [--num-classes N] [--head H]
[--width W]``; ``--list`` lists the networks.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import sys
import types
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vggjax.errors import ConfigError, VggjaxError
from vggjax.freeze import Frozen
from vggjax.models import registry

# feats entries that re-expose the previous op's output (a convenience for callers, not a
# layer op); the table skips them when they alias the preceding row.
ALIASES = frozenset({"score_map"})

_REPEAT = re.compile(r"#\d+$")

# (substring of a parameter-free row's name, row type); first match wins.
_OP_TYPES: tuple[tuple[str, str], ...] = (
    ("relu", "ReLU"),
    ("tanh", "Tanh"),
    ("sigmoid", "Sigmoid"),
    ("softmax", "Softmax"),
    ("avgpool", "AvgPool"),
    ("gap", "GlobalAvgPool"),
    ("pool", "MaxPool"),
    ("flatten", "Flatten"),
    ("add", "Add"),
    ("drop", "Dropout"),
)

MB = 1024.0**2


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: feats name, layer type, output shape, parameters, resolved
    module path."""

    name: str
    type: str
    shape: tuple[int, ...]
    dtype: Any
    params: int
    module: str | None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.type})"


@dataclasses.dataclass(frozen=True)
class Summary:
    """The numbers behind the table.

    Attributes:
      rows: one :class:`Row` per recorded layer op, in execution order.
      input_shape / input_dtype: the NHWC input the forward was traced with.
      total_params / trainable_params / non_trainable_params: element counts of
        ``nnx.Param`` + ``Frozen``, ``nnx.Param``, and ``Frozen`` variables.
      param_tensors: ``(path, size)`` of every parameter tensor in PyTorch's order (layers
        in forward order, weight/scale before bias).
      input_mb / forward_backward_mb / params_mb / total_mb: torchsummary's memory
        estimates in MiB.
      flops: forward-pass FLOPs from XLA cost analysis of the plain XLA ops (the model's
        FLOPs, the same on every platform; None if not computed/available).
      compute: the model's compute policy and what it runs here (None for a model without one).
    """

    rows: tuple[Row, ...]
    input_shape: tuple[int, ...]
    input_dtype: Any
    total_params: int
    trainable_params: int
    non_trainable_params: int
    param_tensors: tuple[tuple[str, int], ...]
    input_mb: float
    forward_backward_mb: float
    params_mb: float
    total_mb: float
    flops: float | None
    compute: str | None = None

    def table(self) -> str:
        """The torchsummary-style table as a string (no trailing newline)."""
        w = max([20] + [len(r.label) for r in self.rows])
        line = "-" * max(64, w + 44)
        dline = "=" * len(line)
        fmt = "{:>%d}  {:>25} {:>15}" % w
        out = [line, fmt.format("Layer (type)", "Output Shape", "Param #"), dline]
        for r in self.rows:
            shape = str([-1, *r.shape[1:]])
            out.append(fmt.format(r.label, shape, f"{r.params:,}"))
        out += [
            dline,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            line,
            f"Input size (MB): {self.input_mb:0.2f}",
            f"Forward/backward pass size (MB): {self.forward_backward_mb:0.2f}",
            f"Params size (MB): {self.params_mb:0.2f}",
            f"Estimated Total Size (MB): {self.total_mb:0.2f}",
        ]
        if self.flops is not None:
            out.append(
                f"FLOPs (forward, XLA cost analysis): {self.flops:,.0f} ({_si(self.flops)}FLOPs)"
            )
        if self.compute is not None:
            out.append(f"Compute policy: {self.compute}")
        out.append(line)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _si(x: float) -> str:
    """``29.97 G`` style rendering of a count."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def _size(v) -> int:
    return int(math.prod(v.shape))


def _var_value(var: nnx.Variable):
    return var.get_value() if hasattr(var, "get_value") else var.value


def _module_index(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every submodule of ``model`` by its '/'-joined path (e.g. ``"features/conv1_1"``)."""
    return {
        "/".join(map(str, p)): m
        for p, m in nnx.iter_graph(model)
        if isinstance(m, nnx.Module) and p
    }


def _resolve(name: str, modules: dict[str, nnx.Module]) -> str | None:
    """The path of the module ``name`` refers to (see module docstring), or None."""
    base = _REPEAT.sub("", name)
    best: tuple[int, str] | None = None
    for path in modules:
        parts = path.split("/")
        for k in range(1, len(parts) + 1):
            if "_".join(parts[-k:]) == base:
                if best is None or k < best[0]:
                    best = (k, path)
                break
    return None if best is None else best[1]


def _op_type(name: str) -> str:
    low = _REPEAT.sub("", name).lower()
    for key, typ in _OP_TYPES:
        if key in low:
            return typ
    return "Op"


_PARAM_ORDER = {"kernel": 0, "weight": 0, "scale": 1, "embedding": 0, "bias": 2}


def _params_of(module: nnx.Module) -> list[tuple[str, int, bool]]:
    """(relative path, size, trainable) of the module's Param/Frozen variables, torch order
    within a layer."""
    out = []
    for path, var in nnx.iter_graph(module):
        if isinstance(var, (nnx.Param, Frozen)):
            rel = "/".join(map(str, path))
            out.append((rel, _size(_var_value(var)), isinstance(var, nnx.Param)))
    out.sort(
        key=lambda t: (
            t[0].rsplit("/", 1)[0] if "/" in t[0] else "",
            _PARAM_ORDER.get(t[0].rsplit("/", 1)[-1], 1),
        )
    )
    return out


def _forward_fn(graphdef, *, record: list | None = None) -> Callable:
    def fwd(state, x):
        model = nnx.merge(graphdef, state)
        logits, feats = model(x, return_features=True)
        if record is not None:
            # Python side effect at trace time: keep the execution order (pytree
            # flattening would sort the dict) and which entries alias the previous one.
            prev = None
            for k, v in feats.items():
                record.append((k, v is prev))
                prev = v
        return logits, feats

    return fwd


def _cost_flops(fwd: Callable, state, x, policy: Any = None) -> float | None:
    """Forward FLOPs from XLA's cost analysis of the lowered (uncompiled) HLO; compiled as a
    fallback.

    Lowered for a platform that gets the plain XLA ops (``cuda``) unless the policy forces
    the CPU formulations, so the count is the model's, not that of a CPU rewrite (im2col
    multiplies padding taps; the fc6 fold skips repeated rows).
    """

    def logits_only(state, x):
        return fwd(state, x)[0]

    try:
        traced = jax.jit(logits_only).trace(state, x)
        try:
            plain_platform = None if policy is not None and policy.mode == "cpu" else "cuda"
            lowered = (
                traced.lower(lowering_platforms=(plain_platform,))
                if plain_platform
                else traced.lower()
            )
        except Exception:  # noqa: BLE001 - a platform this jaxlib cannot lower for: count what runs here
            lowered = traced.lower()
        for analysis in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
            ca = analysis()
            if isinstance(ca, (list, tuple)):
                ca = ca[0] if ca else None
            if ca and ca.get("flops") is not None:
                return float(ca["flops"])
    except Exception:  # cost analysis is best-effort and backend dependent
        return None
    return None


def summarize(
    model: nnx.Module, input_shape: Sequence[int], *, dtype=jnp.float32, flops: bool = True
) -> Summary:
    """Trace ``model`` on an abstract NHWC input of ``input_shape`` and collect the table's numbers.

    ``model`` may be concrete or abstract (from ``nnx.eval_shape``); nothing is allocated
    and the model is not modified (it is traced in its current train/eval mode, like
    torchsummary). ``input_shape`` includes the batch, e.g. ``(1, 224, 224, 3)``.
    """
    input_shape = tuple(int(d) for d in input_shape)
    policy = getattr(model, "compute", None)
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct(input_shape, jnp.dtype(dtype))
    record: list[tuple[str, bool]] = []
    fwd = _forward_fn(graphdef, record=record)
    _, feats = jax.eval_shape(fwd, state, x)

    modules = _module_index(model)
    seen: set[int] = set()
    rows: list[Row] = []
    tensors: list[tuple[str, int]] = []
    for name, is_alias in record:
        out = feats[name]
        path = _resolve(name, modules)
        if path is None and is_alias and name in ALIASES:
            continue
        if path is None:
            rows.append(Row(name, _op_type(name), tuple(out.shape), out.dtype, 0, None))
            continue
        module = modules[path]
        count = 0
        if id(module) not in seen:
            seen.add(id(module))
            for rel, size, _ in _params_of(module):
                count += size
                tensors.append((f"{path}/{rel}", size))
        rows.append(Row(name, type(module).__name__, tuple(out.shape), out.dtype, count, path))

    trainable = [
        _var_value(v)
        for v in jax.tree.leaves(
            nnx.state(model, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable)
        )
    ]
    frozen = [
        _var_value(v)
        for v in jax.tree.leaves(
            nnx.state(model, Frozen), is_leaf=lambda v: isinstance(v, nnx.Variable)
        )
    ]
    n_train = sum(_size(v) for v in trainable)
    n_frozen = sum(_size(v) for v in frozen)
    param_bytes = sum(_size(v) * jnp.dtype(v.dtype).itemsize for v in trainable + frozen)

    input_mb = math.prod(input_shape) * jnp.dtype(dtype).itemsize / MB
    fb_mb = 2.0 * sum(math.prod(r.shape) * jnp.dtype(r.dtype).itemsize for r in rows) / MB
    params_mb = param_bytes / MB
    return Summary(
        rows=tuple(rows),
        input_shape=input_shape,
        input_dtype=jnp.dtype(dtype),
        total_params=n_train + n_frozen,
        trainable_params=n_train,
        non_trainable_params=n_frozen,
        param_tensors=tuple(tensors),
        input_mb=input_mb,
        forward_backward_mb=fb_mb,
        params_mb=params_mb,
        total_mb=input_mb + fb_mb + params_mb,
        flops=_cost_flops(_forward_fn(graphdef), state, x, policy) if flops else None,
        compute=policy.describe(jax.default_backend()) if policy is not None else None,
    )


def summary(
    model: nnx.Module, input_shape: Sequence[int], *, dtype=jnp.float32, flops: bool = True
) -> str:
    """The torchsummary-style table of ``model`` for an NHWC input of ``input_shape`` (e.g.
    ``(1, 224, 224, 3)``).

    Rows: ``name (Type)``, output shape ``[-1, H, W, C]``, parameters; then total /
    trainable / non-trainable parameter counts, torchsummary's memory estimates (MiB) and
    the forward FLOPs. Works on abstract models (no weights allocated); see :func:`summarize`.
    """
    return summarize(model, input_shape, dtype=dtype, flops=flops).table()


# --------------------------------------------------------------------------- CLI


def _accepts(fn: Callable, option: str) -> bool:
    try:
        # nnx.Module's metaclass hides a class's signature behind (*args, **kwargs).
        params = inspect.signature(fn.__init__ if isinstance(fn, type) else fn).parameters
    except (TypeError, ValueError):
        return False
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_abstract(name: str, **options) -> tuple[nnx.Module, int]:
    """Build network ``name`` abstractly (no weights allocated); returns (model, natural
    input size).

    ``options`` (e.g. ``num_classes``, ``head``, ``width``) go to the builder; an option
    the builder does not take raises :class:`~vggjax.errors.ConfigError`.
    """
    entry = registry.get(name)
    for opt in options:
        if not _accepts(entry.signature_source, opt):
            raise ConfigError(f"model {name!r} has no option {opt!r}")
    return nnx.eval_shape(lambda: entry(rngs=nnx.Rngs(0), **options)), entry.input_size


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vggjax.summary NAME``: print the table; user errors print one line and
    return 2."""
    parser = argparse.ArgumentParser(
        prog="python -m vggjax.summary",
        description="Print a torchsummary-style table (no weights are allocated).",
    )
    parser.add_argument(
        "name", nargs="?", help="a VGG arch (vgg16, vgg16_bn, ...) or a seed net (see --list)"
    )
    parser.add_argument(
        "--input-size", type=int, help="input height = width (default: the network's natural size)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="batch of the traced input (default 1)"
    )
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--head", help="VGG head: fc, fc_conv or gap")
    parser.add_argument("--width", type=float, help="channel width multiplier")
    parser.add_argument(
        "--compute", help="compute policy (vggjax.ops.Policy spec: auto, xla, cpu, ...)"
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the XLA cost analysis")
    parser.add_argument("--list", action="store_true", help="list the network names and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, entry in registry.entries().items():
            print(f"{name:<20} {entry.input_size:>4}  {entry.description}")
        return 0
    try:
        if args.name is None:
            raise ConfigError(f"give a network name; valid: {', '.join(registry.names())}")
        options = {
            k: v
            for k, v in (
                ("num_classes", args.num_classes),
                ("head", args.head),
                ("width", args.width),
                ("compute", args.compute),
            )
            if v is not None
        }
        model, size = build_abstract(args.name, **options)
        size = args.input_size or size
        in_ch = getattr(model, "in_channels", 3)
        text = summary(model, (args.batch_size, size, size, in_ch), flops=not args.no_flops)
    except VggjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


class _CallableModule(types.ModuleType):
    """Lets ``vggjax.summary(model, shape)`` work although ``vggjax.summary`` is also this
    module."""

    def __call__(self, *args, **kwargs) -> str:
        return summary(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
