"""What the benchmark reports share: the finalize table and the plot of time vs
tokens with the floors (benchmarks.moe writes one run, benchmarks.merge_results
several)."""

from __future__ import annotations

import math


def finalize_table_md(rows: list[dict]) -> str:
    """Markdown table of the finalize kernels' rows ("" when there are none)."""
    if not rows:
        return ""
    out = ("\n| finalize T | model | H | K | vectorized (us) | scalar (us) | vec / scalar speedup | "
           "vec % of copy BW |\n|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        out += (f"| {r['T']} | {r.get('model', '-')} | {r['H']} | {r['K']} | {r['vec_us']:.1f} | {r['scalar_us']:.1f} | "
                f"{r['vec_speedup_vs_scalar']:.2f} | {r['vec_fraction_of_copy_bw']:.0%} |\n")
    if any(r.get("source") == "stage_timer" for r in rows):
        out += ("\nFinalize rows: `stage_timer --finalize` (each kernel alone on the pipeline's own y and maps, "
                "L2 flushed; bytes = K bf16 rows read + one written per token).\n")
    return out


def plot_time_vs_tokens(rows: list[dict], path: str, cols: int = 4) -> None:
    """One log-log panel per (model, weights, acts): jax_moe's time, the memory and
    compute floors, the target time where rows carry one, and bf16 ragged_dot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install '.[bench]')")
        return
    groups = sorted({(r["model"], r["weights"], r["acts"]) for r in rows})
    if not groups:
        return
    cols = min(cols, len(groups))
    nrows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.6 * nrows), squeeze=False)
    for ax, g in zip(axes.flat, groups):
        rs = sorted((r for r in rows if (r["model"], r["weights"], r["acts"]) == g), key=lambda r: r["T"])
        Ts = [r["T"] for r in rs]
        ax.loglog(Ts, [r["time_us"] for r in rs], "o-", label="jax_moe")
        ax.loglog(Ts, [r["mem_floor_us"] for r in rs], "k--", label="memory floor")
        ax.loglog(Ts, [r["compute_floor_us"] for r in rs], "k:", label="compute floor")
        if all("target_time_us" in r for r in rs):
            ax.loglog(Ts, [r["target_time_us"] for r in rs], "g-.", label="target")
        if any(r.get("ragged_dot_bf16_us") for r in rs):
            ax.loglog(Ts, [r.get("ragged_dot_bf16_us") or math.nan for r in rs], "s-", label="ragged_dot bf16")
        ax.set_title(" / ".join(g), fontsize=9)
        ax.set_xlabel("tokens")
        ax.set_ylabel("us")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
