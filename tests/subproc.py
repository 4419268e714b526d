"""The environment of the tests' subprocesses: this checkout importable, JAX on the CPU, N fake
devices."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_env(devices: int | None = 1, *, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """``os.environ`` for a child ``python`` that imports this checkout's ``vggjax`` and runs
    JAX on the CPU.

    Args:
      devices: fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``);
        ``None`` sets ``XLA_FLAGS`` empty (one device, no flag of the parent's).
      drop: variables of the parent's environment to leave out.
      extra: variables to set last (they win over the defaults above).
    """
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        XLA_FLAGS="" if devices is None else f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env
