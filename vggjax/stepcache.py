"""Warm starts without tracing: jitted steps saved with :mod:`jax.export` next to the
compilation cache.

JAX's persistent compilation cache saves XLA's compile in a second process, but JAX must
still trace the Python step and lower it to StableHLO to compute the cache key. For the
VGG-16-BN train step, tracing and lowering take longer than loading the executable, so
they are most of a warm start (see ``jax.trace_lower_s`` and ``jax.warm_cache`` in
experiments/results/bench/vgg16_bn_32_b64.json). :class:`CachedStep` serializes the
traced step (``jax.export``) under ``<cache_dir>/vggjax-steps/``; a second process reads
it, lowers one call of it and gets the same executable from the compilation cache.

A stale file would run the wrong program, so the file name is a digest of everything
that decides the trace: the caller's ``key`` (the trainer passes the whole config — its
compute policy included — the loss, the class count, the schedule length), the source of
every ``vggjax`` module, the name tables a trace reads (``CFGS``, the initializer and
model registries; a callable added from outside vggjax counts with its source), the
jax/jaxlib/flax/optax/numpy versions, JAX's trace-affecting config, the backend and
device count, and the tree structure, shapes, dtypes and shardings of the arguments.

Anything export cannot handle (several processes, host callbacks, a damaged or unreadable
file, an unwritable directory) falls back to the plain :func:`jax.jit` path, which computes
the same values (tested bit for bit, on 1 and 8 devices and across processes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import os
import tempfile
from typing import Any, Callable

import jax
from jax import export

SUBDIR = "vggjax-steps"
_SUFFIX = ".jaxexport"
_DIGEST = hashlib.sha256().digest_size


@functools.cache
def source_digest() -> str:
    """sha256 over the path and text of every ``.py`` file of the installed ``vggjax`` package."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(d, f)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def _stable(v: Any, depth: int = 0) -> str:
    """A repr of ``v`` that is the same in every process: containers item by item, callables by
    ``module.qualname`` (plus a digest of their source when defined outside vggjax)."""
    if depth > 6:
        return "..."
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return repr(v)
    if isinstance(v, dict):
        return (
            "{"
            + ",".join(
                sorted(f"{_stable(k, depth + 1)}:{_stable(x, depth + 1)}" for k, x in v.items())
            )
            + "}"
        )
    if isinstance(v, (set, frozenset)):
        return "{" + ",".join(sorted(_stable(x, depth + 1) for x in v)) + "}"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__}(" + ",".join(_stable(x, depth + 1) for x in v) + ")"
    if isinstance(v, functools.partial):
        return f"partial({_stable((v.func, v.args, v.keywords), depth + 1)})"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # a registry entry: its fields
        fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        return f"{type(v).__qualname__}{_stable(fields, depth + 1)}"
    if callable(v):
        module = getattr(v, "__module__", None) or "?"
        name = f"{module}.{getattr(v, '__qualname__', type(v).__qualname__)}"
        if module != "vggjax" and not module.startswith("vggjax."):
            try:
                name += "#" + hashlib.sha256(inspect.getsource(v).encode()).hexdigest()[:16]
            except (OSError, TypeError):
                pass
        return name
    text = repr(v)
    return f"{type(v).__module__}.{type(v).__qualname__}" if " at 0x" in text else text


def registries() -> str:
    """The name tables a trace looks names up in — VGG configs, heads, reference nets,
    initializers, losses, activations — written stably. User code may add entries (its own
    initializer or model), and a callable from outside vggjax counts with its source, so
    an edited builder is not served from a stale file."""
    from vggjax import initializers, layers, losses
    from vggjax.models import heads, registry, vgg

    tables = {
        "cfgs": vgg.CFGS,
        "archs": vgg.ARCHS,
        "heads": heads.HEADS,
        "models": registry.entries(),
        "init": initializers.REGISTRY,
        "bias_init": initializers.BIAS_REGISTRY,
        "losses": losses.LOSSES,
        "activations": layers.ACTIVATIONS,
    }
    return _stable(tables)


def _versions() -> str:
    out = []
    for dist in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist}=?")
    return ";".join(out)


def _trace_context() -> str:
    """JAX's trace-affecting config (x64, default matmul precision, PRNG impl, ...), without
    object addresses."""
    try:
        from jax._src import config as jax_config

        parts = [repr(x) for x in jax_config.trace_context()]
    except Exception:  # noqa: BLE001 - a private API: without it the key only gets coarser
        return "?"
    return ";".join(p for p in parts if " at 0x" not in p)


def signature(tree: Any) -> str:
    """Tree structure plus shape, dtype, weak type and sharding of every leaf of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    parts = [str(treedef)]
    for x in leaves:
        aval = jax.typeof(x)
        sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
        parts.append(f"{aval.str_short()}|{getattr(aval, 'weak_type', False)}|{sharding}")
    return "\n".join(parts)


def cache_key(key: str, *args: Any) -> str:
    """The file name digest for a step traced under ``key`` with arguments ``args``."""
    h = hashlib.sha256()
    for part in (
        key,
        source_digest(),
        registries(),
        _versions(),
        _trace_context(),
        jax.default_backend(),
        str(jax.device_count()),
        *(signature(a) for a in args),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _read(path: str) -> export.Exported | None:
    """The exported step at ``path``, or None when it is missing, damaged or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        digest, blob = data[:_DIGEST], data[_DIGEST:]
        if hashlib.sha256(blob).digest() != digest:
            return None
        return export.deserialize(bytearray(blob))
    except Exception:  # noqa: BLE001 - any unreadable file is a cache miss
        return None


def _write(path: str, blob: bytes) -> None:
    """Write ``blob`` (with its sha256 in front) atomically; a failed write only loses the
    cache entry."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(blob).digest() + blob)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass


class CachedStep:
    """``jax.jit(fn, ...)`` for ``fn(state, batch) -> (state, metrics)`` (or ``-> metrics``),
    exported once per trace key.

    Args:
      fn: the step. With ``returns_state`` it returns a new state of the same tree
        structure as its first argument, plus metrics (a dict of arrays).
      key: everything besides the arguments and the vggjax source that decides ``fn``'s
        trace (the trainer passes its config and derived sizes as JSON).
      cache_dir: the persistent compilation cache directory; empty turns the export cache off.
      in_shardings, out_shardings, donate_state: as :func:`jax.jit`'s (``in_shardings``
        for ``(state, batch)`` with a sharding tree for the state).

    :attr:`source` says what the first call used: ``"cache"`` (read from disk),
    ``"exported"`` (traced now and written) or ``"jit"`` (export unavailable; plain jit).
    """

    def __init__(
        self,
        fn: Callable,
        *,
        key: str,
        cache_dir: str | None,
        returns_state: bool = True,
        in_shardings: Any = None,
        out_shardings: Any = None,
        donate_state: bool = False,
    ) -> None:
        self.fn = fn
        self.key = key
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else ""
        self.returns_state = returns_state
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.donate = (0,) if donate_state else ()
        self.jitted = jax.jit(fn, **self._jit_kwargs(in_shardings, out_shardings))
        self.source: str | None = None
        self.path = ""
        self._flat: Callable | None = None
        self._treedef: Any = None

    def _jit_kwargs(self, in_shardings: Any, out_shardings: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {"donate_argnums": self.donate}
        if in_shardings is not None:
            kw["in_shardings"] = in_shardings
        if out_shardings is not None:
            kw["out_shardings"] = out_shardings
        return kw

    def _flat_shardings(self) -> tuple[Any, Any]:
        """The shardings for the flat ``(state_leaves, batch)`` signature."""
        ins = outs = None
        if self.in_shardings is not None:
            state_sh, batch_sh = self.in_shardings
            ins = (jax.tree.leaves(state_sh), batch_sh)
        if self.out_shardings is not None:
            outs = (
                (jax.tree.leaves(self.out_shardings[0]), self.out_shardings[1])
                if self.returns_state
                else self.out_shardings
            )
        return ins, outs

    def _export(self, state: Any, batch: Any, treedef: Any) -> export.Exported:
        fn, returns_state = self.fn, self.returns_state

        def flat(leaves: list, batch: Any) -> Any:
            out = fn(jax.tree.unflatten(treedef, leaves), batch)
            if not returns_state:
                return out
            new_state, metrics = out
            new_leaves, new_treedef = jax.tree.flatten(new_state)
            if new_treedef != treedef:
                raise ValueError("the step's new state has another tree structure than its input")
            return new_leaves, metrics

        ins, outs = self._flat_shardings()
        return export.export(jax.jit(flat, **self._jit_kwargs(ins, outs)))(
            jax.tree.leaves(state), batch
        )

    def _build(self, state: Any, batch: Any) -> None:
        """Find (or trace and write) the exported step for these arguments; else use plain jit."""
        self.source = "jit"
        if not self.cache_dir or jax.process_count() > 1:
            return
        treedef = jax.tree.structure(state)
        self.path = os.path.join(
            self.cache_dir, SUBDIR, cache_key(self.key, state, batch) + _SUFFIX
        )
        exp = _read(self.path)
        if exp is not None:
            self.source = "cache"
        else:
            try:
                exp = self._export(state, batch, treedef)
                blob = exp.serialize()
            except Exception:  # noqa: BLE001 - not exportable (e.g. host callbacks): plain jit
                return
            _write(self.path, bytes(blob))
            self.source = "exported"
        ins, outs = self._flat_shardings()
        self._flat = jax.jit(exp.call, **self._jit_kwargs(ins, outs))
        self._treedef = treedef

    def _leaves(self, state: Any, batch: Any) -> list | None:
        """``state``'s leaves for the exported step (built on the first call), or None: use
        plain jit (no exported step, or a state of another structure than the one it was
        made for)."""
        if self.source is None:
            self._build(state, batch)
        if self._flat is None:
            return None
        leaves, treedef = jax.tree.flatten(state)
        return leaves if treedef == self._treedef else None

    def _unflatten(self, out: Any) -> Any:
        if not self.returns_state:
            return out
        new_leaves, metrics = out
        return jax.tree.unflatten(self._treedef, new_leaves), metrics

    def __call__(self, state: Any, batch: Any) -> Any:
        leaves = self._leaves(state, batch)
        if leaves is None:
            return self.jitted(state, batch)
        return self._unflatten(self._flat(leaves, batch))

    def lower(self, state: Any, batch: Any) -> "_Lowered":
        """Ahead-of-time lowering (as ``jax.jit(...).lower``); ``.compile()`` gives a callable
        on ``(state, batch)``."""
        leaves = self._leaves(state, batch)
        if leaves is None:
            return _Lowered(self.jitted.lower(state, batch), None)
        return _Lowered(self._flat.lower(leaves, batch), self)


class _Lowered:
    def __init__(self, lowered: Any, step: CachedStep | None) -> None:
        self.lowered, self.step = lowered, step

    def compile(self) -> "_Compiled":
        return _Compiled(self.lowered.compile(), self.step)


class _Compiled:
    """A compiled step that takes and returns the state tree (the executable's other methods
    pass through)."""

    def __init__(self, compiled: Any, step: CachedStep | None) -> None:
        self.compiled, self.step = compiled, step

    def __call__(self, state: Any, batch: Any) -> Any:
        if self.step is None:
            return self.compiled(state, batch)
        return self.step._unflatten(self.compiled(jax.tree.leaves(state), batch))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compiled, name)
