"""The run directory: its default name, the pre-flight write and free-space check, and
``metrics.jsonl`` rewound to a checkpoint on resume."""

from __future__ import annotations

import datetime
import json
import os
import shutil

from vggjax.errors import WorkdirError


def default_workdir(config_name: str) -> str:
    """A fresh ``./runs/NAME-YYYYmmdd-HHMMSS`` directory name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config_name}-{stamp}")


def check_workdir(workdir: str, checkpoint_bytes: int = 0) -> None:
    """Create ``workdir`` and prove it is writable and has room for a checkpoint, or raise
    WorkdirError.

    Writes and removes a small probe file (permissions, read-only mounts, a path under a
    regular file all fail here) and compares the free space with ``checkpoint_bytes``
    plus 10% and 16 MiB for metrics. Remote paths (``gs://...``) are left to orbax.
    """
    if "://" in workdir:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".vggjax-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(
            f"cannot write to --workdir={workdir}: {e.strerror or e}; "
            "pick a directory you can write to"
        ) from None
    need = int(checkpoint_bytes * 1.1) + (16 << 20)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise WorkdirError(
            f"not enough disk space in --workdir={workdir}: {free / 2**20:.0f} MiB free, "
            f"a checkpoint needs about {need / 2**20:.0f} MiB; "
            "free some space or pick another --workdir"
        )


def rewind_metrics(path: str, step: int) -> int:
    """Drop the records after ``step`` (and ``summary`` records) from ``metrics.jsonl``; returns
    how many.

    A run killed after its last checkpoint logged steps that the resumed run trains
    again; without this the file would hold them twice. A half-written last line (the
    kill came mid-write) is dropped too. The file is replaced atomically.
    """
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                ok = (
                    line.endswith("\n")
                    and rec.get("kind") != "summary"
                    and int(rec["step"]) <= step
                )
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                keep.append(line)
            elif line.strip():
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return dropped
