"""The model registry: a name → builder table that model modules register into
(torchvision/timm style).

``vggjax.models.vgg`` registers ``vgg11`` … ``vgg19_bn``; ``vggjax.models.reference`` the
networks of the reference cases (``wsdr``, ``net``, ``overfeat_slim``, …). The trainer's
``config.model``, ``python -m vggjax.summary NAME`` and the step cache all look names up
here, so a model of your own is one call away from the trainer::

    from vggjax.models import registry
    registry.register("my_net", MyNet, input_size=32, description="my net")
    # python -m vggjax.train --config=my_config.py   (config.model = "my_net")

A builder takes keyword options (``num_classes``, ``rngs``, ``compute``, and, where it has
them, ``in_channels`` and ``dtype``) and returns an NNX module whose ``__call__(x, *,
return_features=False)`` maps NHWC images to logits.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from flax import nnx

from vggjax.errors import ConfigError, one_of


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered model: its builder, natural NHWC input size, one-line description and family.

    ``options`` is the callable whose signature lists the builder's keyword options (the
    builder itself unless it forwards ``**kwargs``, as the VGG builders do to :class:`VGG`);
    ``fixed`` names parameters of that signature the builder sets itself (a VGG builder's
    ``cfg`` and ``batch_norm``), which are therefore not options.
    """

    name: str
    build: Callable[..., nnx.Module]
    input_size: int
    description: str
    family: str = "user"
    options: Callable[..., Any] | None = None
    fixed: tuple[str, ...] = ()

    def __call__(self, **kwargs: Any) -> nnx.Module:
        return self.build(**kwargs)

    @property
    def signature_source(self) -> Callable[..., Any]:
        return self.options if self.options is not None else self.build

    def parameters(self) -> dict[str, inspect.Parameter] | None:
        """The builder's keyword parameters (None when it takes ``**kwargs`` or has no
        signature)."""
        try:
            params = inspect.signature(self.signature_source).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return {
            k: p
            for k, p in params.items()
            if k != "self"
            and k not in self.fixed
            and p.kind is not inspect.Parameter.VAR_POSITIONAL
        }


_ENTRIES: dict[str, Entry] = {}


def register(
    name: str,
    build: Callable[..., nnx.Module],
    *,
    input_size: int,
    description: str,
    family: str = "user",
    options: Callable[..., Any] | None = None,
    fixed: tuple[str, ...] = (),
    replace: bool = False,
) -> Entry:
    """Register ``build`` under ``name`` and return its :class:`Entry`.

    A name registered twice is a mistake (two modules disagree about what ``name`` means)
    unless ``replace=True``.
    """
    if not replace and name in _ENTRIES and _ENTRIES[name].build is not build:
        raise ConfigError(f"model {name!r} is already registered; pass replace=True to replace it")
    entry = Entry(name, build, input_size, description, family, options, tuple(fixed))
    _ENTRIES[name] = entry
    return entry


def get(name: str) -> Entry:
    """The entry of ``name``; a one-line ConfigError listing every name if unknown."""
    _load_builtin()
    if name not in _ENTRIES:
        raise one_of("model", name, _ENTRIES)
    return _ENTRIES[name]


def names(family: str | None = None) -> list[str]:
    """Registered names, sorted (only those of ``family`` — ``"vgg"``, ``"reference"``,
    ``"user"`` — if given)."""
    _load_builtin()
    return sorted(n for n, e in _ENTRIES.items() if family is None or e.family == family)


def entries() -> dict[str, Entry]:
    """A copy of the whole table (name → entry)."""
    _load_builtin()
    return dict(_ENTRIES)


def build(name: str, **options: Any) -> nnx.Module:
    """Build the model registered as ``name`` with keyword ``options``."""
    return get(name)(**options)


def _load_builtin() -> None:
    # The built-in families register when their modules are imported.
    import vggjax.models.reference  # noqa: F401
    import vggjax.models.vgg  # noqa: F401
