"""Reliability diagrams for calibration reports: a PNG for people and the same data as JSON.

matplotlib is imported inside the function, so workers that never draw do not pay for it, and the
figure is rendered through the Agg canvas directly (no pyplot, no global backend switch, no
display), which is safe in a headless worker or a test.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson


def reliability_diagram(curves: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Write `path` (PNG) and `path` with suffix .json, one curve per entry of `curves`.

    Each value is `metrics.reliability_data(...)` output, e.g. {"raw": before, "calibrated": after}.
    Top panel: accuracy against mean confidence per non-empty bin, the diagonal, ECE in the legend.
    Bottom panel: item counts per bin, so sparse bins are visibly sparse. Returns the PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.0, 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, data in curves.items():
        _draw_curve(top, bottom, name, data)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence (top label)", ylabel="items")
    fig.savefig(path, format="png", dpi=120)
    path.with_suffix(".json").write_bytes(
        orjson.dumps({"title": title, "curves": curves}, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


def _draw_curve(top: Any, bottom: Any, name: str, data: dict[str, Any]) -> None:
    """One reliability curve (non-empty bins only) and its count histogram, in matching colours."""
    full = [i for i, c in enumerate(data["count"]) if c > 0]
    line, = top.plot([data["confidence"][i] for i in full], [data["accuracy"][i] for i in full],
                     marker="o", label=f"{name} (ECE {data['ece']:.3f})")
    edges = data["edges"]
    widths = [hi - lo for lo, hi in itertools.pairwise(edges)]
    bottom.bar(edges[:-1], data["count"], width=widths, align="edge", alpha=0.4, color=line.get_color(),
               edgecolor=line.get_color(), label=name)
