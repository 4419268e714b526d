"""vggjax.hostmem: with glibc.malloc.hugetlb=1 a jitted function's large temporary buffer is
faulted in 2 MiB pages instead of 4 KiB ones, and the CLIs restart themselves with it set."""

import subprocess
import sys

import pytest
from subproc import ROOT, cpu_env

from vggjax import hostmem

# A jitted function with a 64 MiB temporary (the outer product feeds a matmul, so XLA must
# materialise it): glibc serves 64 MiB blocks with mmap (its threshold stops at 32 MiB) and
# unmaps them when freed, so every call maps them afresh. Prints the minor page faults of
# each of 6 calls.
FAULTS_SCRIPT = """
import resource
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.outer(x, x) @ x).sum())
x = jnp.arange(4096, dtype=jnp.float32)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""

PAGES_64MIB = (64 << 20) // 4096
HUGEPAGES_HERE = hostmem.hugepages_env({}) is not None  # glibc Linux, THP in madvise mode


def _run(script: str, **env: str) -> str:
    full = cpu_env(None, drop=("GLIBC_TUNABLES", hostmem.OPT_OUT), **env)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(
    not HUGEPAGES_HERE, reason="needs glibc and transparent huge pages in madvise mode"
)
def test_hugetlb_tunable_cuts_the_per_call_page_faults():
    default = [int(v) for v in _run(FAULTS_SCRIPT).split()]
    huge = [int(v) for v in _run(FAULTS_SCRIPT, GLIBC_TUNABLES=hostmem.TUNABLE).split()]
    # 4 KiB pages: every call faults in all 16 384 pages of the 64 MiB afresh.
    assert all(f >= PAGES_64MIB for f in default[1:]), default
    # 2 MiB pages: 32 faults per 64 MiB (plus the odd small page), not 16 384.
    assert all(f < PAGES_64MIB // 16 for f in huge[1:]), huge


@pytest.mark.skipif(
    not HUGEPAGES_HERE, reason="needs glibc and transparent huge pages in madvise mode"
)
def test_restart_with_hugepages_reexecs_once_with_the_tunable():
    script = (
        "import os, sys; print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True); "
        "from vggjax import hostmem; hostmem.restart_with_hugepages()"
    )
    lines = _run(script).split("\n")
    first, second = (line.split() for line in lines[:2])
    assert (
        first[1] == "None" and second[1] == hostmem.TUNABLE
    )  # the same command, started again with the tunable
    assert first[0] == second[0]  # exec: the same process
    assert lines[2:] == [""]  # and only once
    opted_out = _run(script, VGGJAX_HUGEPAGES="0").split("\n")
    assert (
        len(opted_out) == 2 and opted_out[0].split()[1] == "None"
    )  # VGGJAX_HUGEPAGES=0: no restart


def test_hugepages_env_adds_the_tunable_once(monkeypatch):
    monkeypatch.setattr(hostmem, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(hostmem.sys, "platform", "linux")
    monkeypatch.setattr(hostmem.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert hostmem.hugepages_env({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": hostmem.TUNABLE}
    assert (
        hostmem.hugepages_env({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})["GLIBC_TUNABLES"]
        == "glibc.pthread.rseq=0:" + hostmem.TUNABLE
    )
    assert hostmem.hugepages_env({"GLIBC_TUNABLES": hostmem.TUNABLE}) is None  # already restarted
    assert (
        hostmem.hugepages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    )  # the user's own choice
    assert hostmem.hugepages_env({hostmem.OPT_OUT: "0"}) is None


@pytest.mark.parametrize("mode", ["always", "never", ""])
def test_hugepages_env_is_none_where_the_tunable_changes_nothing(monkeypatch, mode):
    monkeypatch.setattr(hostmem, "_thp_mode", lambda: mode)
    assert hostmem.hugepages_env({}) is None


def test_hugepages_env_is_none_off_linux(monkeypatch):
    monkeypatch.setattr(hostmem, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(hostmem.sys, "platform", "darwin")
    assert hostmem.hugepages_env({}) is None
