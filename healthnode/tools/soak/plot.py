"""soak.png: the soak's figures over time, one panel each (matplotlib, Agg backend).

Theory of operation. `plot_series` turns soak.json's intervals into plain lists (pure, testable
without matplotlib); `write_plot` draws them. Panels, all over minutes since the load started:
RSS per node, open file descriptors per node, trio tasks per node, connections by kind (summed
over the nodes), and the wallet commands' p50 and p99 latency per interval. Fault windows are
shaded on every panel (pauses grey, crashes red, link cuts as thin lines), so a step in a curve
can be read against what the nemesis did then. matplotlib is an optional extra (`pip install
'healthnode[soak]'`) and is imported only here, inside `write_plot`: without it the soak still
runs and says in soak.json that the plot was skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

from healthnode.tools.soak.record import CONNECTION_KINDS

FIGURE_INCHES: Final = (11.0, 15.0)
DPI: Final = 100
FAULT_COLOURS: Final = {"pause": "0.85", "crash": "#f4b6b6", "link_cut": "#9fb7d9"}


def _number(value: Any, scale: float = 1.0) -> float:
    return value / scale if isinstance(value, int | float) else math.nan


def plot_series(document: dict[str, Any]) -> dict[str, Any]:
    """Lists to draw: `minutes`; per node `rss_mib`, `fds`, `tasks`; `connections` per kind
    summed over nodes; `p50_ms` and `p99_ms`; and the fault windows in minutes. A value that
    was not measured is NaN (a gap in its line)."""
    intervals = document.get("intervals", [])
    node_count = max((len(interval["nodes"]) for interval in intervals), default=0)
    series: dict[str, Any] = {
        "minutes": [interval["t_s"] / 60 for interval in intervals],
        "rss_mib": [[math.nan] * len(intervals) for _ in range(node_count)],
        "fds": [[math.nan] * len(intervals) for _ in range(node_count)],
        "tasks": [[math.nan] * len(intervals) for _ in range(node_count)],
        "connections": {kind: [math.nan] * len(intervals) for kind in CONNECTION_KINDS},
        "p50_ms": [_number(interval["wallet"]["p50_ms"]) for interval in intervals],
        "p99_ms": [_number(interval["wallet"]["p99_ms"]) for interval in intervals],
        "faults": [],
    }
    for column, interval in enumerate(intervals):
        for sample in interval["nodes"]:
            node = sample["node"]
            series["rss_mib"][node][column] = _number(sample.get("rss_kib"), 1024)
            series["fds"][node][column] = _number(sample.get("fds"))
            series["tasks"][node][column] = _number(sample.get("tasks"))
        for kind in CONNECTION_KINDS:
            counts = [sample["connections"][kind] for sample in interval["nodes"]
                      if isinstance(sample.get("connections"), dict)
                      and isinstance(sample["connections"].get(kind), int)]
            if counts:
                series["connections"][kind][column] = float(sum(counts))
    end_minutes = series["minutes"][-1] if series["minutes"] else 0.0
    for window in document.get("fault_windows", []):
        end_s = window["end_s"]
        series["faults"].append({
            "cause": window["cause"], "start": window["start_s"] / 60,
            "end": end_s / 60 if end_s is not None else end_minutes})
    return series


def write_plot(document: dict[str, Any], path: Path) -> dict[str, Any]:
    """Draw soak.png at `path`; what happened, for soak.json (`written` or `skipped`)."""
    try:
        import matplotlib  # noqa: PLC0415 (an optional extra, for this function only)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return {"skipped": "matplotlib is not installed: pip install 'healthnode[soak]'"}
    series = plot_series(document)
    if not series["minutes"]:
        return {"skipped": "no samples were taken"}
    figure, axes = plt.subplots(5, 1, figsize=FIGURE_INCHES, sharex=True)
    minutes = series["minutes"]
    panels = (("rss_mib", "RSS (MiB)"), ("fds", "open file descriptors"),
              ("tasks", "trio tasks"))
    for axis, (key, title) in zip(axes[:3], panels, strict=True):
        for node, values in enumerate(series[key]):
            axis.plot(minutes, values, marker=".", label=f"node{node}")
        axis.set_title(f"{title} per node")
    for kind, values in series["connections"].items():
        axes[3].plot(minutes, values, marker=".", label=kind)
    axes[3].set_title("connections by kind (all nodes)")
    axes[4].plot(minutes, series["p50_ms"], marker=".", label="p50")
    axes[4].plot(minutes, series["p99_ms"], marker=".", label="p99")
    axes[4].set_title("wallet command latency per interval (ms)")
    axes[4].set_xlabel("minutes since the load started")
    measured = [any(not math.isnan(v) for values in series[key] for v in values)
                for key, _ in panels]
    measured.append(any(not math.isnan(v) for values in series["connections"].values()
                        for v in values))
    measured.append(any(not math.isnan(v) for v in series["p50_ms"]))
    for axis, has_values in zip(axes, measured, strict=True):
        if not has_values:
            axis.text(0.5, 0.5, "not measured", transform=axis.transAxes, ha="center",
                      va="center", color="0.4")
    for axis in axes:
        for fault in series["faults"]:
            colour = FAULT_COLOURS.get(fault["cause"], "0.9")
            if fault["end"] - fault["start"] > 0:
                axis.axvspan(fault["start"], fault["end"], color=colour, alpha=0.6, lw=0)
            else:
                axis.axvline(fault["start"], color=colour, lw=1)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", fontsize="small")
    summary = document.get("summary", {})
    figure.suptitle(f"healthnode soak: {summary.get('nodes')} nodes, "
                    f"{summary.get('ran_s')} s, seed {document['config'].get('seed')}; "
                    "grey: pause, red: crash, blue: link cut")
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return {"written": str(path)}
