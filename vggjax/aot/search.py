"""``--max-batch``: the largest global batch whose train step fits a target, found by compiling.

Memory per device is close to linear in the per-device batch, ``total ≈ fixed + per_example ×
b``, and the search fits that line to what the compiles report: the first compile seeds it
(``fixed`` ≈ the state, its update and the code); later it goes through the two measured points
nearest the boundary. Not every report is a point on it: near the limit XLA:TPU fills the
memory it has (a batch that fits reports nearly all of it, whatever its size), so a fitting
compile above :data:`SATURATED` of the available memory only moves the lower bound, while a
refused compile's "needed" figure is a true point. Until a batch fails the search grows (at least
doubling); once a fitting and a failing batch bracket the answer, a line guess that does not fall
strictly inside the bracket, or when the last two did not halve it, gives way to bisection. Every
compiled batch's FLOPs per image are kept: XLA:TPU rematerialises (recomputes activations) to fit
a big batch, and rising FLOPs per image is that recomputation showing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from vggjax.aot.compile import OutOfMemory, compile_step
from vggjax.aot.targets import Target


def _point(entry: dict[str, Any]) -> dict[str, Any]:
    mem = entry["memory"]  # an out-of-memory record has only the total XLA reported
    return {
        "batch": entry["batch"],
        "per_device_batch": entry["per_device_batch"],
        "fits": mem["fits"],
        "total_bytes": mem.get("total_bytes"),
        "temp_bytes": mem.get("temp_bytes"),
        "flops_per_image": entry.get("flops_per_image"),
        "compile_s": entry.get("compile_s"),
    }


# A fitting compile reporting more than this share of the available memory is not a point on the
# line: XLA:TPU spends spare memory (prefetch, fewer rematerialisations) when it has it.
SATURATED = 0.9
# Unbounded and without a measured line, the next batch is at least this many times the largest
# that fits: one example more per device would spend a compile of minutes to learn little.
GROW = 1.25


def _usable(p: dict[str, Any], saturated: float) -> bool:
    return bool(p["total_bytes"]) and (not p["fits"] or p["total_bytes"] < saturated)


def _line(
    points: dict[int, dict], first: dict[str, Any], saturated: float
) -> tuple[float, float, bool]:
    """``(fixed, per_example, measured)`` bytes per device: through the two usable points nearest
    the boundary (``measured``), or from the first compile alone (``per_example`` 0: nothing to go
    on)."""
    usable = [(b, p["total_bytes"]) for b, p in points.items() if _usable(p, saturated)]
    fails = [b for b, p in points.items() if not p["fits"]]
    edge = min(fails) if fails else max(points)
    if len(usable) >= 2:
        (b1, t1), (b2, t2) = sorted(usable, key=lambda bt: abs(bt[0] - edge))[:2]
        if b1 != b2 and (t2 - t1) / (b2 - b1) > 0:
            slope = (t2 - t1) / (b2 - b1)
            return t1 - slope * b1, slope, True
    mem = first["memory"]
    fixed = first["expected_argument_bytes"]["state"] * 2 + (mem.get("code_bytes") or 0)
    if not mem.get("total_bytes") or mem["total_bytes"] <= fixed:
        return fixed, 0.0, False
    return fixed, (mem["total_bytes"] - fixed) / first["per_device_batch"], False


def _next(
    points: dict[int, dict], first: dict, available: float, saturated: float, width: list[int]
) -> int | None:
    """The next per-device batch to compile, or None when the answer is bracketed to one."""
    fits = [b for b, p in points.items() if p["fits"]]
    fails = [b for b, p in points.items() if not p["fits"]]
    lo, hi = max(fits, default=0), min(fails, default=None)
    if hi is not None and hi - lo <= 1:
        return None
    fixed, slope, measured = _line(points, first, saturated)
    guess = math.floor((available - fixed) / slope) if slope > 0 else None
    # The line says lo is the answer: lo + 1 settles it. Unless nothing bounds the search yet and
    # the line is not measured through lo's neighbourhood (lo's own report was a full memory, or
    # memory did not grow with the batch): then only growing finds out.
    trusted = hi is not None or (measured and lo in points and _usable(points[lo], saturated))
    if guess is not None and guess <= lo and trusted:
        guess = lo + 1
    if hi is None:  # grow: the line's guess (by at least GROW unless measured), or double
        if guess is None or guess <= lo:
            return 2 * max(lo, 1)
        return guess if measured else max(guess, math.ceil(GROW * lo))
    guess = hi - 1 if guess is not None and guess >= hi else guess
    inside = guess is not None and lo < guess < hi and guess not in points
    # bisect when the line says nothing new, or its last two guesses did not halve the bracket
    if not inside or (len(width) >= 2 and hi - lo > width[-2] // 2):
        guess = (lo + hi) // 2
    width.append(hi - lo)
    return guess


def max_batch(
    build: Callable[[int], tuple[Callable, tuple]],
    target: Target,
    first: dict[str, Any],
    *,
    dtype: str,
    parallel: str,
    max_compiles: int = 8,
) -> dict[str, Any]:
    """Search the largest fitting global batch by compiling ``build(global_batch)``'s train
    step, starting from ``first`` (:func:`~vggjax.aot.compile.compile_step`'s record, or an
    out-of-memory record with only ``batch``/``per_device_batch``/``memory``)."""
    n = first["devices"]
    points: dict[int, dict] = {first["per_device_batch"]: _point(first)}
    width: list[int] = []
    # XLA:GPU reports what it needs whatever the device has; XLA:TPU fills spare memory
    saturated = target.available_bytes * (SATURATED if target.platform == "tpu" else 2.0)
    while len(points) <= max_compiles:
        b = _next(points, first, target.available_bytes, saturated, width)
        if b is None or b < 1:
            break
        fn, args = build(b * n)
        try:
            entry = compile_step(fn, args, target, batch=b * n, dtype=dtype, parallel=parallel)
            points[b] = _point(entry)
        except OutOfMemory as e:
            points[b] = {"batch": b * n, "per_device_batch": b, "fits": False}
            points[b].update(total_bytes=e.needed, temp_bytes=None, flops_per_image=None)
    fits = sorted(b for b, p in points.items() if p["fits"])
    fails = sorted(b for b, p in points.items() if not p["fits"])
    lo, hi = (fits[-1] if fits else 0), (fails[0] if fails else None)
    fixed, slope, _ = _line(points, first, saturated)
    return {
        "global_batch": lo * n,
        "per_device_batch": lo,
        "exact": hi is not None and hi - lo == 1,
        "smallest_failing_batch": None if hi is None else hi * n,
        "compiles": [points[b] for b in sorted(points)],
        "linear_model": {"fixed_bytes": int(fixed), "bytes_per_example": int(slope)},
        "rematerialisation": remat(points, target.platform),
    }


def remat(points: dict[int, dict], platform: str) -> dict[str, Any]:
    """FLOPs per image from the smallest to the largest fitting compiled batch: rising means
    XLA recomputes activations to fit (only XLA:TPU's compiled count can show it)."""
    rows = sorted((b, p["flops_per_image"]) for b, p in points.items() if p.get("flops_per_image"))
    fitting = [r for r in rows if points[r[0]]["fits"]] or rows
    if platform != "tpu" or len(fitting) < 2:
        why = (
            "GPU FLOPs are counted before optimisation: recomputation cannot show"
            if platform != "tpu"
            else "fewer than two fitting batches compiled"
        )
        return {"observable": False, "detected": None, "note": why}
    (b_lo, f_lo), (b_hi, f_hi) = fitting[0], fitting[-1]
    ratio = f_hi / f_lo
    return {
        "observable": True,
        "detected": bool(ratio > 1.02),
        "flops_per_image": {str(b): f for b, f in rows},
        "ratio": ratio,
        "note": f"FLOPs per image at per-device batch {b_hi} are {ratio:.3f}x those at {b_lo}",
    }
