"""The table ``python -m vggjax.aot`` prints, from its JSON record (:mod:`vggjax.aot`)."""

from __future__ import annotations

from typing import Any

from vggjax.aot.analysis import human_bytes as _gib

_COLUMNS = ("arguments", "outputs", "aliased", "temp", "code", "total", "available", "headroom")
_KEYS = ("argument", "output", "alias", "temp", "code", "total", "available", "headroom")


def _si(value: float | None, unit: str) -> str:
    if not value:
        return "–"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _memory_rows(record: dict[str, Any]) -> list[str]:
    head = f"{'step':6s} {'batch':>6s} {'/dev':>5s}" + "".join(f" {c:>10s}" for c in _COLUMNS)
    rows = [head + "  verdict"]
    for name, step in record["steps"].items():
        mem = step["memory"]
        cells = "".join(f" {_gib(mem.get(k + '_bytes')):>10s}" for k in _KEYS)
        verdict = "fits" if mem.get("fits") else "DOES NOT FIT"
        if mem.get("error"):
            verdict += f" (XLA: {mem['error'][:120]})"
        rows.append(
            f"{name:6s} {step['batch']:>6d} {step['per_device_batch']:>5d}{cells}  {verdict}"
        )
    return rows


def _collectives(step: dict[str, Any]) -> str:
    found = step.get("collectives") or {}
    if not found:
        return "none"
    parts = []
    for kind, v in found.items():
        dtypes = ", ".join(f"{t} {_si(b, 'B')}" for t, b in v.get("bytes_by_dtype", {}).items())
        parts.append(f"{kind} x{v['count']} ({_si(v['bytes'], 'B')}: {dtypes})")
    return "; ".join(parts)


def _convs(step: dict[str, Any]) -> str:
    conv = step.get("convolutions")
    if not conv:
        return "–"
    ops = ", ".join(f"{k} {v}" for k, v in conv["ops"].items() if v)
    cpu = step["cpu_formulations"]
    verdict = (
        "no CPU formulation"
        if cpu["native"]
        else f"CPU FORMULATIONS PRESENT ({cpu['im2col_concatenates_stablehlo']} im2col)"
    )
    return f"{conv['lowering']}: {ops or 'none'}; {verdict}"


def _roofline(step: dict[str, Any]) -> str:
    r = step.get("roofline")
    if not r or not r["step_s"]:
        return "–"
    parts = []
    if r["compute_s"]:
        parts.append(f"compute {r['compute_s'] * 1e3:.2f} ms at {r['peak_tflops']:g} TFLOP/s")
    if r["memory_s"]:
        parts.append(
            f"memory {r['memory_s'] * 1e3:.2f} ms at {r['hbm_bytes_per_s'] / 1e9:.0f} GB/s"
        )
    return (
        f"ESTIMATE, a lower bound: >= {r['step_s'] * 1e3:.2f} ms/step ({r['bound']}-bound), "
        f"<= {r['images_per_s']:,.0f} images/s ({'; '.join(parts)})"
    )


def _max_batch(found: dict[str, Any]) -> list[str]:
    tries = ", ".join(
        f"{p['batch']} {'fits' if p['fits'] else 'no'}"
        + (f" {_gib(p['total_bytes'])}" if p.get("total_bytes") else "")
        for p in found["compiles"]
    )
    exact = "exact" if found["exact"] else "not bracketed to one per device (compile limit)"
    remat = found["rematerialisation"]
    seen = "yes" if remat["detected"] else "no" if remat["observable"] else "–"
    lines = [
        f"max batch: {found['global_batch']} global ({found['per_device_batch']} per device; "
        f"{exact}); compiled: {tries}",
        f"  rematerialisation: {seen} ({remat['note']})",
    ]
    return lines


def table(record: dict[str, Any]) -> str:
    """The human-readable summary of a record: memory per device per step, then per step its
    collectives, FLOPs, convolutions, roofline estimate and compile time."""
    t, c = record["target"], record["config"]
    lines = [
        f"{c['model']} on {t['name']}: {t['devices']} x {t['device_kind']} on {t['hosts']} "
        f"host(s); {c['dataset']} {c['image_size']}x{c['image_size']}x{c['channels']}, "
        f"{c['num_classes']} classes, {c['dtype']}, parallel={c['parallel']}; memory per device "
        f"(available: {t['memory_note']}, of {_gib(t['memory_bytes'])})",
        *_memory_rows(record),
    ]
    for name, step in record["steps"].items():
        if "collectives" not in step:
            continue
        flops = step["flops_per_device"]
        lines += [
            f"{name}: collectives: {_collectives(step)}",
            f"{name}: FLOPs per step per device {_si(flops, 'FLOP')} "
            f"({_si(step['flops_per_image'], 'FLOP')} per image; {step['flops_source']}; "
            f"before optimisation {_si(step['model_flops_per_device'], 'FLOP')})",
            f"{name}: convolutions: {_convs(step)}",
            f"{name}: roofline: {_roofline(step)}",
            f"{name}: compile {step['compile_s']:.1f} s (lowering {step['lower_s']:.1f} s)",
        ]
    if record.get("max_batch"):
        lines += _max_batch(record["max_batch"])
    for note in record.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _ms(step: dict[str, Any]) -> str:
    r = step.get("roofline") or {}
    if not r.get("step_s"):
        return "–"
    return f"≥ {r['step_s'] * 1e3:.1f} ms ({r['bound']}), ≤ {r['images_per_s']:,.0f} img/s"


def _lowering(step: dict[str, Any]) -> str:
    conv = step.get("convolutions")
    if not conv:
        return "–"
    if conv["lowering"].startswith("cuDNN") or any(k.startswith("__cudnn") for k in conv["ops"]):
        n = sum(v for k, v in conv["ops"].items() if k.startswith("__cudnn$conv"))
        text = f"{n} cuDNN"
    else:
        text = f"{conv['ops'].get('convolution', 0)} convolution"
    return text + ("" if step["cpu_formulations"]["native"] else ", CPU FORMULATIONS")


def markdown_row(record: dict[str, Any]) -> str:
    """One row of docs/accelerators.md's table: a record's train step (see :func:`markdown`)."""
    t, c, train = record["target"], record["config"], record["steps"]["train"]
    mem = train["memory"]
    found = record.get("max_batch") or {}
    largest = (
        f"{found['global_batch']} ({found['per_device_batch']}/dev)"
        + ("" if found.get("exact", True) else " ~")
        + (", remat" if found.get("rematerialisation", {}).get("detected") else "")
        if found
        else "–"
    )
    collectives = ", ".join(
        f"{k} ×{v['count']}" for k, v in (train.get("collectives") or {}).items()
    )
    cells = [
        t["name"],
        f"{t['devices']} × {t['device_kind']}, {t['hosts']} host{'s' if t['hosts'] > 1 else ''}",
        f"{c['model']} {c['dtype']} {c['parallel']}",
        f"{train['batch']} ({train['per_device_batch']}/dev)",
        _gib(mem.get("argument_bytes")),
        _gib(mem.get("temp_bytes")),
        f"{_gib(mem.get('total_bytes'))} of {_gib(mem.get('available_bytes'))}",
        "fits" if mem.get("fits") else "**does not fit**",
        largest,
        _si(train.get("flops_per_device"), "FLOP"),
        _lowering(train),
        collectives or "–",
        _ms(train),
        f"{train['compile_s']:.0f} s" if train.get("compile_s") else "–",
    ]
    return "| " + " | ".join(cells) + " |"


MARKDOWN_HEADER = (
    "| target | devices | model | global batch | arguments | temp | total of available | "
    "verdict | largest batch | FLOPs/step/device | convs lowered as | collectives | "
    "roofline (estimate) | compile |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown(records: list[dict[str, Any]]) -> str:
    """docs/accelerators.md's table: per record, the train step's memory per device against what
    the target has, the largest batch found, FLOPs, how the convs were lowered, the collectives,
    the roofline estimate and the compile time."""
    return "\n".join([MARKDOWN_HEADER, *map(markdown_row, records)])
