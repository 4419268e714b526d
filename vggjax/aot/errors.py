"""The one-line errors of ``python -m vggjax.aot`` (printed as ``error: ...``, exit status 2)."""

from __future__ import annotations

from vggjax.errors import VggjaxError


class AotError(VggjaxError):
    """An AOT compile cannot be done as asked: an unknown target, a missing compiler, a batch
    that does not split over the target's devices."""


class CompilerMissing(AotError):
    """The target's compiler (libtpu, or the CUDA plugin with ptxas) is not installed."""


class DoesNotFit(AotError):
    """The step needs more device memory than the target has.

    ``needed`` and ``available`` are bytes per device; ``largest_batch`` the largest global batch
    found to fit (None if not searched, 0 if not even one example per device fits).
    """

    def __init__(
        self, message: str, needed: int, available: int, largest_batch: int | None = None
    ) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.largest_batch = largest_batch
