"""The benchmark's record as a terminal table, a Markdown table, and a PNG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zcopy_bench.verdict import describe

__all__ = ["format_markdown", "format_table", "plot"]

_ORDER_TITLES = {"seq": "sequential", "shuffle": "shuffled", "block": "block-shuffled"}


def _ratio(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.1f}x" if x >= 0.95 else f"{x:.2g}x"


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 else "<1%"


def _limit_key(result: dict[str, Any]) -> str:
    """The ceiling a row is measured against: 1-thread gather, or all threads when torch uses more."""
    return "gather_1t" if result["config"].get("threads", 1) == 1 else "index_select_all"


def _cells(r: dict[str, Any], limit: str) -> list[str]:
    copies = r["copies_per_batch"]
    return [
        r["contender"],
        r["order"],
        str(r["workers"]),
        f"{r['samples_per_s']:,.0f}",
        f"{r['gb_per_s']:.2f}",
        "?" if copies is None else f"{copies:g}",
        f"{r['peak_mem_mib']:,.0f}",
        _ratio(r["ratio_to_default"]),
        _percent(r["fraction_of_gather_1t" if limit == "gather_1t" else "fraction_of_index_select_all"]),
    ]


_LIMIT_TITLES = {"gather_1t": "1-thread gather", "index_select_all": "all-threads index_select"}
_HEAD = ["contender", "order", "workers", "samples/s", "GB/s", "copies", "mem MiB", "x default", "of limit"]


def _limit_lines(result: dict[str, Any]) -> list[str]:
    out = []
    for order, lim in result["limits"].items():
        g, s = lim["gather_1t"], lim["index_select_all"]
        out.append(
            f"limit {order:<8} gather 1 thread {g['samples_per_s']:>12,.0f} samples/s ({g['gb_per_s']:.2f} GB/s)   "
            f"index_select {result['machine']['cpus']} threads {s['samples_per_s']:>12,.0f} ({s['gb_per_s']:.2f} GB/s)"
        )
    return out


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table: one row per contender, order and workers, then the limits and targets."""
    limit = _limit_key(result)
    body = [_cells(r, limit) for r in result["rows"]]
    widths = [max(len(x) for x in col) for col in zip(_HEAD, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*_HEAD), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body]
    lines += ["", *_limit_lines(result)]
    lines += [
        "copies: copies of the batch's bytes per batch (ledger or counted, see the JSON's copies_basis)",
        "mem MiB: peak growth of the main process's anonymous + shared memory (mapped file pages excluded)",
        f"of limit: samples/s as a fraction of the {_LIMIT_TITLES[limit]} limit for the same order",
    ]
    for s in result["skipped"]:
        lines.append(f"skipped {s['contender']}: {s['reason']}")
    for pair in result.get("paired", []):
        ratios = pair["ratios"]
        lines.append(
            f"paired {pair['order']}: zcopy with {pair['workers']} workers / no workers, taking turns in one "
            f"process: {pair['ratio']:.2f}x (median of {len(ratios)} rounds, {min(ratios):.2f}-{max(ratios):.2f})"
        )
    if result["targets"]:
        lines += [
            "targets: the two sides of each take turns in one process, one ratio per round, in 3 or more processes;",
            "  met when the median's 95% interval clears the goal, NOT met when it is all below, else inconclusive",
        ]
    lines += [describe(t) for t in result["targets"]]
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """The same table in Markdown, for the README."""
    head = ["contender", "order", "workers", "samples/s", "GB/s", "copies/batch", "peak MiB", "x default", "of limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_cells(r, _limit_key(result))) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bars per contender for each (order, workers) cell, log scale, the machine limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    cells = list(dict.fromkeys((r["order"], r["workers"]) for r in rows))
    names = list(dict.fromkeys(r["contender"] for r in rows))
    by = {(r["contender"], r["order"], r["workers"]): r for r in rows}
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(cells) + 2), 4.8), dpi=110)
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for j, name in enumerate(names):
        xs, ys = [], []
        for i, cell in enumerate(cells):
            r = by.get((name, *cell))
            if r is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r["samples_per_s"])
        bars = ax.bar(xs, ys, width * 0.95, label=name, color=colors[j % len(colors)])
        ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=6, rotation=90, padding=2)
    limit = _limit_key(result)
    for i, (order, _) in enumerate(cells):
        lim = result["limits"][order][limit]["samples_per_s"]
        ax.hlines(lim, i - 0.45, i + 0.45, colors="black", linestyles="--", linewidth=1.2)
    ax.plot([], [], "k--", linewidth=1.2, label=f"{_LIMIT_TITLES[limit]} limit")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{_ORDER_TITLES.get(o, o)}\n{w} workers" for o, w in cells], fontsize=8)
    ax.set_ylabel("samples/s (median, log scale)")
    data = result["data"]
    machine = result["machine"]
    ax.set_title(
        f"{data['n']:,} samples x {data['sample_bytes']:,} B, batch {result['config']['batch_size']} - "
        f"{machine['cpus']} CPUs, {machine['accelerator'] or 'no accelerator'}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=len(names) + 1, frameon=False)
    ax.margins(y=0.2)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _short(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"
