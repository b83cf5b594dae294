"""The benchmarks' figures, drawn with matplotlib (no display needed) as PNG files in
``docs/figures/``, which ``docs/benchmarks.md`` shows. Each takes the numbers its bench
measured and writes one figure; the bench prints the path."""
from __future__ import annotations

from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _plain_ticks(axis) -> None:
    """Log-scale ticks at 1, 2, 5 of each decade, as plain numbers (20, 50), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, name: str, note: str) -> Path:
    fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    fig.savefig(path, metadata={"Software": None})  # no version stamp: a re-run changes only the figure
    return path


def latency_cdf(percentiles_ms: dict[float, float], *, title: str, note: str, name: str = "intake_latency_cdf.png"):
    """The share of requests answered within each latency (wrk's percentiles)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ps = sorted(percentiles_ms)
    ax.plot([percentiles_ms[p] for p in ps], [p / 100 for p in ps], marker=".")
    for p in (50, 99):
        if p in percentiles_ms:
            ax.axvline(percentiles_ms[p], ls=":", color="0.5")
            ax.annotate(f"p{p} {percentiles_ms[p]:.1f} ms", (percentiles_ms[p], p / 100), xytext=(4, -12),
                        textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("latency of POST /v1/deletion-requests (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    return _save(fig, name, note)


def speedup_vs_owners(rows: list[dict], *, title: str, note: str, name: str = "speedup_vs_owners.png"):
    """Speed-up over a full retrain (measured) against owners removed in one pass; the
    shards each pass retrained on a second axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ks = [r["owners"] for r in rows]
    ax.plot(ks, [r["speedup"] for r in rows], marker="o", label="speed-up (full retrain s / unlearn s)")
    ax.axhline(1.0, color="0.5", ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("owners removed in one pass")
    ax.set_ylabel("speed-up over a full retrain")
    ax2 = ax.twinx()
    ax2.plot(ks, [r["shards_retrained"] for r in rows], marker="s", color="tab:orange", ls="--",
             label="shards retrained")
    ax2.set_ylabel("shards retrained", color="tab:orange")
    ax2.set_ylim(0, max(r["shards_total"] for r in rows) + 0.5)
    ax2.grid(False)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=7, loc="center right")
    ax.set_title(title)
    return _save(fig, name, note)


def gap_vs_speedup(points: list[dict], *, title: str, note: str, name: str = "gap_vs_speedup.png"):
    """Each method's Avg Gap from Retrain against its speed-up over Retrain, with doing
    nothing (the original model) as a horizontal line: a method below it helps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    no_op = next((p for p in points if p["method"] == "original"), None)
    for p in points:
        if p["method"] in ("original", "retrain"):
            continue
        ax.errorbar(p["speedup"], p["gap"], yerr=p.get("gap_std") or None, fmt="o", capsize=2)
        ax.annotate(p["method"], (p["speedup"], p["gap"]), xytext=(4, 3), textcoords="offset points", fontsize=8)
    if no_op:
        ax.axhline(no_op["gap"], color="tab:red", ls="--", label=f"doing nothing ({no_op['gap']:.2f})")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_ylim(0, max(p["gap"] + (p.get("gap_std") or 0) for p in points) * 1.1)
    ax.set_xlabel("speed-up over Retrain (log scale)")
    ax.set_ylabel("Avg Gap from Retrain (points)")
    ax.set_title(title)
    return _save(fig, name, note)
