"""The compute policy: which formulation of each op vggjax lowers, on which platform.

A :class:`Policy` is a frozen, hashable value passed explicitly — a model option
(``vggjax.vgg16_bn(compute="xla")``), a trainer config field (``config.compute``), an
argument of the train step — the way Flax's examples inject ``conv: ModuleDef``. It names
every formulation choice and threshold; nothing about it is global state.

Modes:

* ``"auto"`` (the default): the CPU-tuned formulations of :mod:`vggjax.ops.cpu` when the
  computation is lowered for CPU, the plain XLA ops of :mod:`vggjax.ops.xla` when it is
  lowered for anything else (CUDA, ROCm, TPU). The choice is made by
  ``lax.platform_dependent`` when the step is *lowered*, for the platform it is lowered
  for — not from ``jax.default_backend()`` at trace time — so ``jax.export(...,
  platforms=("cuda",))`` on a CPU host gets the GPU program.
* ``"xla"``: the plain XLA ops everywhere (``lax.conv_general_dilated`` with autodiff's
  own transposes, ``lax.reduce_window`` max pooling, pooling then the Linear layer,
  ``sum(square(g))``).
* ``"cpu"``: the CPU formulations everywhere (an A/B on an accelerator).

A policy is written as a short spec, ``MODE[,field=value...]``, e.g. ``"auto"`` or
``"auto,tapgrad_min_pixels=256"``; :meth:`Policy.parse` reads it and ``str(policy)``
writes it back (fields at their default are left out).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Mapping

from vggjax.errors import ConfigError

MODES = ("auto", "xla", "cpu")


@dataclasses.dataclass(frozen=True)
class Policy:
    """How vggjax computes convolutions, max pooling, the pooled fc6 and gradient sums of squares.

    Args:
      mode: ``"auto"``, ``"xla"`` or ``"cpu"`` (module docstring).
      im2col_max_pixels: CPU: a 3×3-or-larger conv whose output map has at most this many
        pixels is one im2col matmul.
      im2col_max_rows: CPU: ... or whose matmul has at most this many rows (batch × output
        pixels; under mesh-jit the batch is the global one).
      im2col_max_in_channels: CPU: ... or whose input has at most this many channels (the
        RGB image layer).
      row_im2col_max_out_channels: CPU: larger maps with at most this many output channels
        use im2col along the width only (VGG's 64-channel conv1_2).
      tapgrad_min_pixels / tapgrad_min_out_channels: CPU: on maps of at least this many
        pixels with at least this many output channels the kernel gradient is one matmul
        per kernel tap.
      fold_pooled_linear: CPU: when adaptive pooling upsamples (a 1×1 map pooled to 7×7
        before fc6), fold the pooling into fc6's kernel.
      argmax_max_pool: CPU: max pooling by argmax and select instead of ``reduce_window``.
      squares_by_dot: CPU: gradient sums of squares as ``vdot(g, g)``.

    The thresholds come from the per-layer profiles and A/B runs recorded under
    ``experiments/results/bench/`` (``python -m vggjax.bench --profile``, ``--variant``).
    """

    mode: str = "auto"
    im2col_max_pixels: int = 4
    im2col_max_rows: int = 2048
    im2col_max_in_channels: int = 4
    row_im2col_max_out_channels: int = 64
    tapgrad_min_pixels: int = 64
    tapgrad_min_out_channels: int = 128
    fold_pooled_linear: bool = True
    argmax_max_pool: bool = True
    squares_by_dot: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"unknown compute mode {self.mode!r}; valid: {', '.join(MODES)} "
                "(e.g. compute='auto')"
            )
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if f.type == "bool":
                ok = isinstance(value, bool)
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            if not ok:
                want = "True or False" if f.type == "bool" else "an integer >= 0"
                raise ConfigError(f"compute policy field {f.name} must be {want}, got {value!r}")

    @classmethod
    def parse(cls, spec: "Policy | str | Mapping[str, Any] | None") -> "Policy":
        """A Policy from a Policy, a spec string (``"auto,tapgrad_min_pixels=256"``), a dict of
        fields, or None (auto)."""
        if spec is None:
            return cls()
        if isinstance(spec, Policy):
            return spec
        if isinstance(spec, Mapping):
            return cls._from_fields(dict(spec), repr(dict(spec)))
        if not isinstance(spec, str):
            raise ConfigError(
                f"compute must be a policy spec such as 'auto', 'xla' or 'cpu', got {spec!r}"
            )
        mode, *items = [part.strip() for part in spec.split(",")]
        fields: dict[str, Any] = {"mode": mode}
        for item in items:
            key, eq, text = item.partition("=")
            if not eq:
                raise ConfigError(
                    f"compute policy {spec!r}: {item!r} is not field=value; "
                    "e.g. 'auto,tapgrad_min_pixels=256'"
                )
            try:
                fields[key.strip()] = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                raise ConfigError(
                    f"compute policy {spec!r}: {text.strip()!r} is not a number or True/False"
                ) from None
        return cls._from_fields(fields, repr(spec))

    @classmethod
    def _from_fields(cls, fields: dict[str, Any], given: str) -> "Policy":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise ConfigError(
                f"compute policy {given}: unknown field(s) {', '.join(unknown)}; "
                f"valid: {', '.join(names)}"
            )
        return cls(**fields)

    def __str__(self) -> str:
        default = Policy()
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)[1:]
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return ",".join([self.mode, *changed])

    def formulations(self, platform: str) -> str:
        """``"cpu"`` or ``"xla"``: the formulations a computation lowered for ``platform`` runs."""
        if self.mode != "auto":
            return self.mode
        return "cpu" if platform == "cpu" else "xla"

    def resolve(self, platform: str) -> "Policy":
        """This policy with ``"auto"`` replaced by what it means on ``platform`` (``"cpu"``,
        ``"cuda"``, ``"tpu"``, ...)."""
        return dataclasses.replace(self, mode=self.formulations(platform))

    def describe(self, platform: str) -> str:
        """One line for humans: the policy and what it runs on ``platform``."""
        kind = self.formulations(platform)
        what = (
            "CPU-tuned formulations (im2col / per-tap kernel gradients, argmax max pooling, "
            "fc6 fold)"
            if kind == "cpu"
            else "native XLA ops (convolution, reduce_window max pooling, pool then Linear)"
        )
        return f"{self} (lowered for {platform}: {what})"


def plain() -> Policy:
    """The policy of plain XLA ops everywhere (``Policy("xla")``): what model FLOPs are
    counted on."""
    return Policy("xla")
