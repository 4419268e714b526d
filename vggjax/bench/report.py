"""Reading bench records: the printed summary, the markdown tables and the step-time plot."""

from __future__ import annotations

from typing import Any, Sequence

from vggjax import hostmem

# The A/A control's name among a record's variants: a second copy of the default step (the same
# executable, from the compilation cache) timed in the same turns as everything else. Its speed
# against the default is what the run's noise does to a ratio between two identical programs.
CONTROL = "control"


def summary_lines(record: dict[str, Any]) -> list[str]:
    """A short human-readable summary of a bench ``record``."""
    cfg, jx = record["config"], record["jax"]
    lines = [
        f"{cfg['arch']} {cfg['size']}x{cfg['size']} batch {cfg['batch']} ({cfg['dtype']}) "
        f"on {record['machine']['cpu_model']}, "
        f"load {record['load_avg_start'][0]:.2f} -> {record['load_avg_end'][0]:.2f}",
        f"jax step: {jx['step']['median_s'] * 1e3:.0f} ms median "
        f"(spread {jx['step']['spread_pct']:.0f}%), "
        f"{jx['step']['images_per_s']:.1f} img/s; first step {jx['first_step_s']:.1f} s "
        f"(trace+lower {jx['trace_lower_s']:.2f} s, compile {jx['compile_s']:.2f} s)",
    ]
    warm = jx.get("warm_cache")
    if warm and "error" not in warm:
        lines.append(
            f"warm cache: first step {warm['first_step_s']:.2f} s "
            f"(trace+lower {warm['trace_lower_s']:.2f} s, "
            f"compile/load {warm['compile_s']:.2f} s, run {warm['first_run_s']:.2f} s)"
        )
    u = record["utilisation"]
    lines.append(
        f"{jx['flops'] / 1e9:.1f} GFLOP/step executed -> {u['step_gflops']:.1f} GFLOP/s "
        f"= {100 * u['fraction_of_peak']:.0f}% "
        f"of the measured {u['peak_gflops']:.0f} GFLOP/s matmul peak; "
        f"peak RSS {jx['peak_rss_mib']:.0f} MiB"
    )
    if "model_flops" in jx:
        lines.append(
            f"{jx['model_flops'] / 1e9:.1f} GFLOP/step model (the plain step's count) "
            f"-> {u['model_step_gflops']:.1f} "
            f"GFLOP/s = {100 * u['model_fraction_of_peak']:.0f}% of peak (MFU)"
        )
    if "input_pipeline" in record:
        p = record["input_pipeline"]
        lines.append(
            f"input pipeline: {p['images_per_s']:.0f} img/s "
            f"({p['ratio_to_train_step']:.1f}x the train step)"
        )
    for name in ("torch_eager", "torch_compile"):
        if name in record:
            t = record[name]
            lines.append(
                f"{name}: {t['step']['median_s'] * 1e3:.0f} ms median, "
                f"{t['step']['images_per_s']:.1f} img/s, "
                f"first step {t['first_step_s']:.1f} s"
            )
    for k, v in record.get("ratios", {}).items():
        lines.append(f"{k}: {v:.2f}x")
    for name, v in record.get("variants", {}).items():
        what = "A/A control, the default step again" if name == CONTROL else _variant_spec(v)
        lines.append(
            f"variant {name} ({what}): {v['step']['median_s'] * 1e3:.0f} ms median, "
            f"{v['speed_vs_default']:.2f}x the default step's speed"
        )
    for row in record.get("conv_profile", []):
        n, h, w, c, o = row["shape"]
        lines.append(
            f"  {row['name']:8s} {n}x{h}x{w}x{c}->{o}: lax.conv {row['lax_conv_s'] * 1e3:7.1f} ms "
            f"({row['lax_conv_gflops']:5.0f} GF/s)  im2col {row['im2col_s'] * 1e3:7.1f} ms "
            f"({row['im2col_gflops']:5.0f} GF/s)  tapgrad {row['tapgrad_s'] * 1e3:7.1f} ms  "
            f"rows {row.get('rows_s', float('nan')) * 1e3:7.1f} ms  -> {row['chosen']}"
        )
    ops = record["jax"].get("op_profile")
    if ops:
        lines.append(
            f"XLA ops, {ops['total_op_ms_per_step']:.0f} ms per step summed over threads; top:"
        )
        for op in ops["top_ops"][:10]:
            lines.append(
                f"  {op['ms_per_step']:7.1f} ms  {op['op']:28s} "
                f"{op.get('shape', '')[:40]:40s} {op.get('source', '')[:60]}"
            )
    for row in record.get("pool_profile", []):
        lines.append(
            f"  {row['name']:8s} {'x'.join(map(str, row['shape']))}: "
            f"reduce_window {row['reduce_window_s'] * 1e3:6.1f} ms"
            f"  vggjax.layers.max_pool {row['vggjax_s'] * 1e3:6.1f} ms"
        )
    return lines


def record_label(record: dict[str, Any], batch_word: str = "batch ") -> str:
    """``vgg16_bn 32×32 batch 64``, plus ``plain`` (``compute="xla"``: no CPU formulations;
    older records say ``formulations: plain``) and ``4 KiB pages`` (run without
    ``glibc.malloc.hugetlb=1``; records older than that setting carry no mark)."""
    c = record["config"]
    label = f"{c['arch']} {c['size']}×{c['size']} {batch_word}{c['batch']}"
    if c.get("formulations") == "plain" or c.get("compute") == "xla":
        label += " plain"
    tunables = record.get("machine", {}).get("glibc_tunables")
    if tunables is not None and hostmem.TUNABLE not in tunables:
        label += " 4 KiB pages"
    return label


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The README's results table: one row per bench ``record`` (as written by ``--out``)."""

    def ms(x: float) -> str:
        return f"{x * 1e3:.0f} ms"

    head = (
        "| config | vggjax step (median, spread) | img/s | PyTorch eager | torch.compile "
        "| vs eager | vs compile "
        "| GFLOP/step model / executed | % of matmul peak: model (MFU) / executed "
        "| compile cold / warm-cache "
        "| input pipeline | peak RSS | load avg start→end |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in records:
        jx, u = r["jax"], r["utilisation"]
        te, tc, ratios = r.get("torch_eager"), r.get("torch_compile"), r.get("ratios", {})
        warm = jx.get("warm_cache", {})
        warm_s = (
            f"{warm['trace_lower_s'] + warm['compile_s']:.2f} s" if "compile_s" in warm else "–"
        )
        pipe = r.get("input_pipeline")
        rows.append(
            "| "
            + " | ".join(
                [
                    record_label(r),
                    f"{ms(jx['step']['median_s'])} (±{jx['step']['spread_pct']:.0f}%)",
                    f"{jx['step']['images_per_s']:.1f}",
                    f"{ms(te['step']['median_s'])}" if te else "–",
                    f"{ms(tc['step']['median_s'])} ({tc['first_step_s']:.0f} s 1st step)"
                    if tc
                    else "–",
                    f"{ratios['jax_vs_torch_eager']:.2f}×"
                    if "jax_vs_torch_eager" in ratios
                    else "–",
                    f"{ratios['jax_vs_torch_compile']:.2f}×"
                    if "jax_vs_torch_compile" in ratios
                    else "–",
                    (f"{jx['model_flops'] / 1e9:.1f} / " if "model_flops" in jx else "– / ")
                    + f"{jx['flops'] / 1e9:.1f}",
                    (
                        f"{100 * u['model_fraction_of_peak']:.0f}% / "
                        if "model_fraction_of_peak" in u
                        else "– / "
                    )
                    + f"{100 * u['fraction_of_peak']:.0f}% of {u['peak_gflops']:.0f} GFLOP/s",
                    f"{jx['trace_lower_s'] + jx['compile_s']:.1f} s / {warm_s}",
                    f"{pipe['images_per_s']:.0f} img/s ({pipe['ratio_to_train_step']:.0f}×)"
                    if pipe
                    else "–",
                    f"{r['peak_rss_mib'] / 1024:.1f} GiB",
                    f"{r['load_avg_start'][0]:.2f}→{r['load_avg_end'][0]:.2f}",
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def variants_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown A/B table of the records' ``--variant`` steps against their default step
    ("" if none)."""
    rows = [
        "| config | step | policy | median (spread) | speed vs the default |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        if not r.get("variants"):
            continue
        jx = r["jax"]
        rows.append(
            f"| {record_label(r)} | default | `compute={r['config'].get('compute', 'auto')}` "
            f"| {jx['step']['median_s'] * 1e3:.0f} ms (±{jx['step']['spread_pct']:.0f}%) | 1.00× |"
        )
        for name, v in r["variants"].items():
            settings = f"`{_variant_spec(v)}`"
            rows.append(
                f"| {record_label(r)} | {name} | {settings} | {v['step']['median_s'] * 1e3:.0f} ms "
                f"(±{v['step']['spread_pct']:.0f}%) | {v['speed_vs_default']:.2f}× |"
            )
    return "\n".join(rows) if len(rows) > 2 else ""


def plot_step_times(records: Sequence[dict[str, Any]], path: str) -> None:
    """Bar chart of each record's median step time: vggjax, PyTorch eager and torch.compile
    (when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels, width = [], 0.27
    for i, r in enumerate(records):
        labels.append(record_label(r, batch_word="b").replace(" 4 KiB", "\n4 KiB"))
        bars = [
            ("vggjax", r["jax"]["step"]["median_s"], "tab:blue"),
            (
                "PyTorch eager",
                r.get("torch_eager", {}).get("step", {}).get("median_s"),
                "tab:orange",
            ),
            (
                "torch.compile",
                r.get("torch_compile", {}).get("step", {}).get("median_s"),
                "tab:green",
            ),
        ]
        for j, (name, sec, color) in enumerate(bars):
            if sec:
                ax.bar(
                    i + (j - 1) * width,
                    sec * 1e3,
                    width,
                    color=color,
                    label=name if name not in ax.get_legend_handles_labels()[1] else None,
                )
                ax.text(
                    i + (j - 1) * width,
                    sec * 1e3,
                    f"{sec * 1e3:.0f}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(records)), labels, fontsize=8)
    ax.set_ylabel("train step, ms (median)")
    ax.set_title(
        f"VGG train step on {records[0]['machine']['cpu_model']}, "
        f"{records[0]['machine']['logical_cores']} cores",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _variant_spec(v: dict[str, Any]) -> str:
    """``compute=SPEC`` of a variant; records from before the compute policy list the module
    settings they changed."""
    if "compute" in v:
        return f"compute={v['compute']}"
    return " ".join(f"{k}={val!r}" for k, val in v.get("settings", {}).items())
