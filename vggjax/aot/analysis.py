"""What a compiled step is, read from XLA's own reports: memory per device, collectives, how the
convolutions were lowered, whether any CPU formulation reached the target, and a roofline bound.

Everything here reads text or numbers XLA produced: ``compiled.memory_analysis()`` (bytes per
device), the optimized HLO (``compiled.as_text()``: collectives and conv lowering), the lowered
StableHLO (``lowered.as_text()``: the program before XLA, where the CPU formulations would show
as im2col concatenates and missing ``reduce_window``), and cost analysis (FLOPs, bytes).
"""

from __future__ import annotations

import collections
import re
from typing import Any

import numpy as np

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_BITS = {"pred": 8, "s4": 4, "u4": 4, "f8e4m3fn": 8, "f8e5m2": 8, "s8": 8, "u8": 8, "s16": 16}
_BITS.update({"u16": 16, "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64})
_BITS.update({"u64": 64, "f64": 64, "c64": 64, "c128": 128})
_SHAPE = re.compile(r"\b(" + "|".join(_BITS) + r")\[([\d,]*)\]")
# One HLO instruction: "%name = SHAPE op(" (SHAPE may be a tuple of shapes).
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(", re.M)


def human_bytes(value: float | None) -> str:
    """Bytes in binary units, 3 significant digits (GiB, MiB or KiB as the size asks)."""
    if value is None:
        return "–"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def shape_bytes(text: str) -> int:
    """Bytes of every array shape (``bf16[8,128]{1,0}``) in an HLO result-shape string."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        total += count * _BITS[dtype] // 8
    return total


def instructions(hlo: str) -> list[tuple[str, str]]:
    """``[(result shape, opcode)]`` of every instruction of an HLO module's text."""
    return _INSTR.findall(hlo)


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """``{kind: {"count", "bytes", "bytes_by_dtype", "largest"}}`` of the collectives in
    optimized HLO (an async ``*-start``/``*-done`` pair counts once, by its start; bytes of its
    result; ``largest`` the biggest one's). The dtypes show what precision gradients are summed
    in: XLA sums bfloat16 gradients before casting them to the float32 parameters'."""
    out: dict[str, dict[str, int]] = {}
    for shape, op in instructions(hlo):
        kind = op[: -len("-start")] if op.endswith("-start") else op
        if kind not in COLLECTIVES:
            continue
        if op.endswith("-start") and kind != "all-reduce" and shape.startswith("("):
            shape = shape.rsplit(",", 1)[-1]  # (operands, result[, context]) tuples: the result
        entry = out.setdefault(kind, {"count": 0, "bytes": 0, "bytes_by_dtype": {}, "largest": 0})
        entry["count"] += 1
        entry["bytes"] += shape_bytes(shape)
        entry["largest"] = max(entry["largest"], shape_bytes(shape))
        for dtype, dims in _SHAPE.findall(shape):
            size = shape_bytes(f"{dtype}[{dims}]")
            entry["bytes_by_dtype"][dtype] = entry["bytes_by_dtype"].get(dtype, 0) + size
    return out


def conv_lowering(hlo: str, platform: str) -> dict[str, Any]:
    """How the convolutions reached the target: TPU ``convolution`` instructions, or on GPU the
    cuDNN custom calls by target (and Triton GEMM fusions, which take the fc layers)."""
    ops = collections.Counter(op for _, op in instructions(hlo))
    if platform == "tpu":
        return {"lowering": "XLA:TPU convolution", "ops": {"convolution": ops["convolution"]}}
    calls = collections.Counter(re.findall(r'custom_call_target="(__cudnn\$[\w]+)"', hlo))
    triton = len(re.findall(r'"kind":"__triton(?:_nested)?_gemm(?:_fusion)?"', hlo))
    found = dict(sorted(calls.items()))
    found["convolution (not cuDNN)"] = ops["convolution"]
    found["triton gemm fusions"] = triton
    return {"lowering": "cuDNN custom calls", "ops": found}


def conv_count(lowering: dict[str, Any]) -> int:
    """Convolutions in :func:`conv_lowering`'s answer (TPU ops, or cuDNN conv calls)."""
    ops = lowering["ops"]
    return sum(v for k, v in ops.items() if k == "convolution" or k.startswith("__cudnn$conv"))


def _im2col(stablehlo: str) -> int:
    """``concatenate`` ops whose result has rank >= 3: im2col patches (a stack of scalars or an
    RNG key is rank 1 or 2)."""
    return sum(
        1
        for line in stablehlo.splitlines()
        if "stablehlo.concatenate" in line and re.search(r"-> tensor<(\d+x){3,}", line)
    )


def _hlo_im2col(hlo: str) -> int:
    """Floating-point ``concatenate`` instructions of rank >= 3 in optimized HLO (XLA:GPU's own
    integer index concatenates for pooling and scatter are not patches)."""
    return sum(
        1
        for shape, op in instructions(hlo)
        if op == "concatenate"
        and any(t in ("bf16", "f16", "f32") and d.count(",") >= 2 for t, d in _SHAPE.findall(shape))
    )


def cpu_formulations(stablehlo: str, hlo: str, lowering: dict[str, Any]) -> dict[str, Any]:
    """Whether a CPU formulation (``vggjax/ops/cpu.py``: im2col, argmax pooling) reached the
    target: ``native`` is True when there is none and the convolutions are the target's own."""
    from vggjax.bench.exports import op_counts

    ops = op_counts(stablehlo)
    found = {
        "im2col_concatenates_stablehlo": _im2col(stablehlo),
        "im2col_concatenates_hlo": _hlo_im2col(hlo),
        "stablehlo_convolution": ops["convolution"],
        "stablehlo_reduce_window": ops["reduce_window"],
        "stablehlo_select_and_scatter": ops["select_and_scatter"],
    }
    found["native"] = (
        found["im2col_concatenates_stablehlo"] == 0
        and found["im2col_concatenates_hlo"] == 0
        and ops["convolution"] > 0
        and ops["reduce_window"] > 0
        and conv_count(lowering) > 0
    )
    return found


def memory(compiled: Any, available: float) -> dict[str, Any]:
    """Bytes per device from ``compiled.memory_analysis()``: arguments, outputs, aliased
    (donated arguments reused as outputs), temporaries, code; ``total`` = arguments + outputs -
    aliased + temp + code, against ``available`` bytes: ``headroom_bytes`` and ``fits``."""
    m = compiled.memory_analysis()
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "code_bytes": int(m.generated_code_size_in_bytes),
    }
    total = (
        out["argument_bytes"]
        + out["output_bytes"]
        - out["alias_bytes"]
        + out["temp_bytes"]
        + out["code_bytes"]
    )
    out.update(
        total_bytes=total,
        available_bytes=int(available),
        headroom_bytes=int(available - total),
        fits=bool(total <= available),
    )
    return out


def cost(analysis: Any) -> dict[str, float]:
    """``{"flops", "bytes_accessed"}`` of a cost analysis (a dict, a one-element list, or None)."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    analysis = analysis or {}
    return {
        "flops": float(analysis.get("flops", 0.0)),
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    }


def roofline(
    flops: float, bytes_moved: float, peak_tflops: float | None, bandwidth: float, batch: int
) -> dict[str, Any]:
    """A lower bound on one step's time per device: FLOPs / peak and bytes / HBM bandwidth,
    whichever is larger (no overlap loss, no collectives, no input pipeline); and the images/s
    of ``batch`` (global) at that time. An estimate, not a measurement."""
    compute_s = flops / (peak_tflops * 1e12) if peak_tflops else None
    memory_s = bytes_moved / bandwidth if bandwidth else None
    known = [t for t in (compute_s, memory_s) if t]
    step_s = max(known) if known else None
    return {
        "estimate": True,
        "compute_s": compute_s,
        "memory_s": memory_s,
        "step_s": step_s,
        "bound": None if step_s is None else ("compute" if step_s == compute_s else "memory"),
        "images_per_s": batch / step_s if step_s else None,
        "peak_tflops": peak_tflops,
        "hbm_bytes_per_s": bandwidth,
    }
