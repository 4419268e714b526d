"""Compile one step for a target and describe it (:func:`compile_step`); find the largest global
batch whose train step fits (:func:`max_batch`).

FLOPs: on TPU, XLA:TPU's cost analysis of the compiled program per chip (after its
optimisations, rematerialisation included); the CUDA plugin has none, so on GPU they are XLA's
cost analysis (the CPU client's ``HloCostAnalysis``) of the step lowered for ``cuda`` before
optimisation, divided over the devices (the same count for every batch: recomputation does not
show). Bytes for the roofline: XLA:TPU's "bytes accessed"; on GPU the CPU client's count of the
optimized GPU module (fusions as compiled; cuDNN calls counted by their operands and results).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import jax

from vggjax.aot import analysis
from vggjax.aot.errors import AotError
from vggjax.aot.steps import pure
from vggjax.aot.targets import Target

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class OutOfMemory(Exception):
    """XLA refused to compile for lack of device memory (XLA:TPU checks; XLA:GPU does not)."""

    def __init__(self, message: str, needed: int | None, available: int | None) -> None:
        super().__init__(message)
        self.needed, self.available = needed, available


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit[:1].upper()])


def out_of_memory(e: BaseException) -> OutOfMemory | None:
    """An :class:`OutOfMemory` if ``e`` is XLA's out-of-memory compile error, else None."""
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    size = r"([\d.]+)\s*([KMGT]i?B?|B)?"
    m = re.search(rf"required for .*?\({size}\) exceeds available HBM \({size}\)", text, re.S)
    m = m or re.search(rf"Used {size} of {size} hbm", text)
    first = next((line for line in text.splitlines() if line.strip()), text)
    if not m:
        return OutOfMemory(first, None, None)
    return OutOfMemory(
        first, _bytes(m.group(1), m.group(2) or ""), _bytes(m.group(3), m.group(4) or "")
    )


def _strip(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def model_flops(fn: Callable, args: tuple, platform: str, parallel: str) -> dict[str, float]:
    """XLA's cost analysis (CPU client) of the step lowered for ``platform`` before any
    optimisation, for the whole global batch (a pmap step is vmapped over its device axis)."""
    from vggjax import parallel as parallel_lib

    body = pure(fn)
    if parallel == "pmap":
        body = jax.vmap(body, axis_name=parallel_lib.AXIS)
    lowered = jax.jit(body).trace(*_strip(args)).lower(lowering_platforms=(platform,))
    return analysis.cost(lowered.cost_analysis())


def _optimized_cost(compiled: Any, platform: str) -> dict[str, float]:
    """Cost analysis of the compiled program per device: XLA:TPU's own, or for GPU the CPU
    client's ``HloCostAnalysis`` of the optimized module (its custom calls count no FLOPs)."""
    if platform == "tpu":
        return analysis.cost(compiled.cost_analysis())
    try:
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        module = compiled.runtime_executable().hlo_modules()[0]
        cpu = xla_bridge.get_backend("cpu")
        return analysis.cost(_jax.hlo_module_cost_analysis(cpu, module))
    except Exception:  # noqa: BLE001 - private API: without it the roofline has no memory term
        return {"flops": 0.0, "bytes_accessed": 0.0}


def lower_and_compile(fn: Callable, args: tuple) -> tuple[Any, Any, float, float]:
    """``(lowered, compiled, lower_s, compile_s)``; :class:`OutOfMemory` if XLA says it does not
    fit."""
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - jax raises XlaRuntimeError/JaxRuntimeError
        oom = out_of_memory(e)
        if oom is not None:
            raise oom from None
        raise
    return lowered, compiled, t1 - t0, time.perf_counter() - t1


def _kept(lowered: Any) -> set[int] | None:
    """Indices of the flat arguments the program keeps (``jax.jit`` drops the ones the step
    never reads, e.g. an optimizer hyperparameter it recomputes); None if unknown."""
    try:
        kept = lowered._lowering.compile_args["kept_var_idx"]  # private: no public accessor
        return set(kept)
    except Exception:  # noqa: BLE001 - older/newer JAX: count every argument
        return None


def expected_arguments(
    args: tuple, devices: int, parallel: str, lowered: Any = None
) -> dict[str, int]:
    """Bytes per device the arguments should take: the (replicated) state plus this device's
    share of the batch, before any padding of the target's memory layout; ``unused`` are the
    state's bytes the program does not take (never read by the step, dropped by ``jax.jit``);
    ``params`` the trainable parameters' (the gradients' size)."""
    from vggjax.training.state import nbytes

    state, batch = args
    share = devices if parallel == "pmap" else 1  # pmap arguments stack one row per device
    kept = _kept(lowered) if lowered is not None else None
    leaves = jax.tree.leaves(state)
    unused = sum(nbytes(x) for i, x in enumerate(leaves) if kept is not None and i not in kept)
    out = {
        "state": (nbytes(state) - unused) // share,
        "batch_shard": nbytes(batch) // devices,
        "unused": unused // share,
        "params": nbytes(state.params) // share,  # what the gradient all-reduce carries
    }
    out["total"] = out["state"] + out["batch_shard"]
    return out


def compile_step(
    fn: Callable, args: tuple, target: Target, *, batch: int, dtype: str, parallel: str
) -> dict[str, Any]:
    """Compile ``fn`` on ``args`` for ``target`` and describe it (see :mod:`vggjax.aot`'s
    record keys); :class:`OutOfMemory` if XLA:TPU refuses it."""
    n = len(jax.tree.leaves(args)[0].sharding.device_set) if parallel == "jit" else None
    n = n or target.devices
    lowered, compiled, lower_s, compile_s = lower_and_compile(fn, args)
    hlo = compiled.as_text()
    conv = analysis.conv_lowering(hlo, target.platform)
    optimized = _optimized_cost(compiled, target.platform)
    model = model_flops(fn, args, target.platform, parallel)
    if target.platform == "tpu":
        flops, source = optimized["flops"], "XLA:TPU cost analysis of the compiled step, per chip"
    else:
        flops = model["flops"] / n
        source = "XLA cost analysis of the step lowered for cuda, before optimisation, / devices"
    return {
        "batch": batch,
        "per_device_batch": batch // n,
        "devices": n,
        "lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
        "memory": analysis.memory(compiled, target.available_bytes),
        "expected_argument_bytes": expected_arguments(args, n, parallel, lowered),
        "collectives": analysis.collectives(hlo),
        "convolutions": conv,
        "cpu_formulations": analysis.cpu_formulations(lowered.as_text(), hlo, conv),
        "flops_per_device": flops,
        "flops_source": source,
        "model_flops_per_device": model["flops"] / n,
        "flops_per_image": flops * n / batch,
        "bytes_accessed_per_device": optimized["bytes_accessed"],
        "roofline": analysis.roofline(
            flops,
            optimized["bytes_accessed"],
            target.peak_tflops(dtype),
            target.hbm_bytes_per_s,
            batch,
        ),
    }


def does_not_fit_message(
    target: Target, batch: int, needed: int | None, search: dict[str, Any] | None = None
) -> str:
    """The one-line 'does not fit' error text; ``search`` is :func:`~vggjax.aot.search.max_batch`'s
    answer, if it ran."""
    need = f"needs {analysis.human_bytes(needed)} per device" if needed else "needs more memory"
    tail = ""
    if search is not None:
        largest = search["global_batch"]
        if largest:
            tail = f"; the largest global batch that fits is {largest}"
            tail += "" if search["exact"] else " (or more: the search hit --max-compiles)"
        elif search["exact"]:
            tail = "; not even one example per device fits"
        else:
            tail = "; no fitting batch found within --max-compiles"
    return (
        f"the train step of batch_size={batch} does not fit on {target.name}: it {need}, "
        f"{analysis.human_bytes(target.available_bytes)} available ({target.memory_note}){tail}"
    )


def require_compiled(step: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """Run ``step``; turn an error that is not out-of-memory into a one-line :class:`AotError`."""
    try:
        return step()
    except (OutOfMemory, AotError):
        raise
    except Exception as e:  # noqa: BLE001 - XLA's errors are long: keep the first line
        first = next((line for line in str(e).splitlines() if line.strip()), repr(e))
        raise AotError(f"compiling the {what} failed: {type(e).__name__}: {first[:300]}") from e
