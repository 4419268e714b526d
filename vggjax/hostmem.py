"""Host memory: back the train step's large buffers with transparent huge pages.

XLA:CPU allocates each step's temporary buffer afresh (its size:
``jax.xla_memory.temp_size_mib`` in experiments/results/bench/vgg16_bn_32_b64.json and
vgg16_bn_112_b8.json) and frees it at the end of the step. glibc serves an allocation
that large with its own ``mmap`` and returns it with ``munmap``, so the kernel maps and
zeroes it again on every step, one 4 KiB page fault at a time, and the step pays for
those faults in system CPU time (``python -m vggjax.bench`` records both per step; see
``jax.host`` in experiments/results/bench/vgg16_bn_32_b64_no_hugepages.json). PyTorch's
large gradients go the same way.

glibc's ``glibc.malloc.hugetlb=1`` tunable makes it ``madvise(MADV_HUGEPAGE)`` what it
maps, so the kernel faults in 2 MiB pages instead, and far fewer of them (``jax.host``
in experiments/results/bench/vgg16_bn_32_b64.json). glibc reads
tunables only when a process starts, so the command-line entry points
(``python -m vggjax.train``, ``python -m vggjax.bench``) start themselves again with it
set (:func:`restart_with_hugepages`; ``VGGJAX_HUGEPAGES=0`` turns that off). It is on by
default because an A/B of the trainer and the ImageNet-size step shows the gain
(experiments/results/bench/hugepages_ab.json, ``python benchmarks/hugepages_ab.py``). Code that
imports vggjax's modules gets the same by starting Python with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment.

(Keeping freed memory in the heap instead — ``mallopt`` with one arena, no mmap, no trim,
which needs no restart — also removed the faults, but makes every thread share one malloc
lock, and the trainer with its input pipeline threads ran slower with it; not kept.)
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
OPT_OUT = "VGGJAX_HUGEPAGES"


def _thp_mode() -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or "" if
    unknown."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def hugepages_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to restart with, or None when a restart would change nothing.

    None when: not glibc Linux; the kernel's THP mode is not ``madvise`` (``always``
    already uses huge pages, ``never`` refuses them); ``GLIBC_TUNABLES`` already sets
    ``glibc.malloc.hugetlb``; or ``VGGJAX_HUGEPAGES=0``. Otherwise a copy of ``environ``
    with the tunable added to any ``GLIBC_TUNABLES`` already there.
    """
    environ = dict(os.environ if environ is None else environ)
    if environ.get(OPT_OUT, "1") == "0":
        return None
    if (
        not sys.platform.startswith("linux")
        or platform.libc_ver()[0] != "glibc"
        or _thp_mode() != "madvise"
    ):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return environ


def restart_with_hugepages() -> None:
    """Replace this process with the same command line, started with :data:`TUNABLE` set.

    For command-line entry points, before they do any work: ``os.execve`` keeps the
    process id, open files and signal dispositions, and the new process finds the tunable
    set and goes on. Returns without doing anything when :func:`hugepages_env` says
    there is nothing to gain, or when the exec fails.
    """
    env = hugepages_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:
        return
