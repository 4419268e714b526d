"""The keyword options every vggjax model shares, declared once.

Every module in :mod:`vggjax.models` ends its constructor with the same options: how its
layers store and compute (``dtype``, ``param_dtype``, ``compute``) and where their random
numbers come from (``rngs``); a whole network adds its initialisers (``init``,
``bias_init``). Rather than a copy of those lines in each signature, a constructor ends with
``**options`` and :func:`takes` writes the options into its signature::

    class MyHead(nnx.Module):
        @options.takes(options.LAYER)
        def __init__(self, in_channels: int, num_classes: int, **layer):
            self.fc = layers.linear(in_channels, num_classes, **options.layer_kw(layer))

``help()``, ``inspect.signature`` and the model registry's option check show the options as
if spelled out; an unknown keyword is still a ``TypeError``; the body receives every option
with its default filled in, ``rngs`` as an ``nnx.Rngs`` (an int is a seed) and ``compute``
as a :class:`~vggjax.ops.Policy`.

The options:

* ``dtype`` — computation dtype (None: from the inputs and parameters).
* ``param_dtype`` — parameter dtype (float32).
* ``compute`` — the compute policy (:class:`vggjax.ops.Policy` or a spec such as ``"auto"``,
  ``"xla"``): how convs, max pools and the pooled fc6 are lowered.
* ``rngs`` — ``nnx.Rngs`` or an int seed.
* ``init`` / ``bias_init`` — initialisation specs (:mod:`vggjax.initializers`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

import jax.numpy as jnp
from flax import nnx

from vggjax.ops import Policy

_P = inspect.Parameter
F = TypeVar("F", bound=Callable[..., Any])


def option(name: str, default: Any, annotation: Any = _P.empty) -> inspect.Parameter:
    """A keyword-only option, to declare in a group that :func:`takes` adds to signatures."""
    return _P(name, _P.KEYWORD_ONLY, default=default, annotation=annotation)


# How a module's layers store and compute, and where their random numbers come from.
LAYER: tuple[inspect.Parameter, ...] = (
    option("dtype", None),
    option("param_dtype", jnp.float32),
    option("compute", "auto", "Policy | str"),
    option("rngs", 0, "nnx.Rngs | int"),
)
# A whole network's: its initialisers, then LAYER.
NET: tuple[inspect.Parameter, ...] = (
    option("init", "torchvision", "initializers.InitSpec"),
    option("bias_init", None, "initializers.InitSpec | None"),
) + LAYER

# A default that makes an option required (heads and blocks are given their parent's rngs).
REQUIRED = _P.empty


def takes(params: tuple[inspect.Parameter, ...], **defaults: Any) -> Callable[[F], F]:
    """Decorate ``fn(..., **options)`` to take the keyword options ``params``.

    ``defaults`` replaces the default of an option by name (``init="torch_default"``;
    :data:`REQUIRED` makes it required). The options join ``fn``'s signature after its own
    parameters, and ``fn`` receives them all in its ``**options``.
    """
    unknown = sorted(set(defaults) - {p.name for p in params})
    if unknown:
        raise TypeError(f"takes: no option(s) {', '.join(unknown)} to set a default for")
    added = [p.replace(default=defaults[p.name]) if p.name in defaults else p for p in params]

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not _P.VAR_KEYWORD]
        if len(own) == len(sig.parameters):
            raise TypeError(f"{fn.__qualname__} must end with **options to take them")
        full = sig.replace(parameters=own + added)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = full.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn.__qualname__}() {e}") from None
            bound.apply_defaults()
            arguments = bound.arguments
            if "compute" in arguments:
                arguments["compute"] = Policy.parse(arguments["compute"])
            if isinstance(arguments.get("rngs"), int):
                arguments["rngs"] = nnx.Rngs(arguments["rngs"])
            return fn(**arguments)

        wrapper.__signature__ = full  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def layer_kw(options: dict[str, Any]) -> dict[str, Any]:
    """The options ``nnx.Linear``, ``nnx.Conv`` and ``nnx.BatchNorm`` take alike:
    ``dtype``, ``param_dtype`` and ``rngs``."""
    return {k: options[k] for k in ("dtype", "param_dtype", "rngs")}
