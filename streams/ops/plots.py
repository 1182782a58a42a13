"""Small server-side SVG charts for the dashboard: no JavaScript, no CDN, nothing to install.

Each chart is an `<svg class="plot">` whose `data-points` attribute says how many data points it
drew (0 = the "no data yet" placeholder), so a test can tell a plot with data from an empty one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

W, H = 440, 210
L, R, T, B = 48, 12, 26, 34  # margins: left (y ticks), right, top (title), bottom (x ticks)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _svg(title: str, body: str, points: int) -> str:
    return (f'<svg class="plot" data-points="{points}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
            f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>'
            f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
            f'{body}</svg>')


def _empty(title: str, why: str) -> str:
    return _svg(title, f'<text class="empty" x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12" '
                       f'fill="#888">{escape(why)}</text>', 0)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) < 0.01 or abs(v) >= 10_000):
        return f"{v:.0e}"
    return f"{v:.3g}"


class _Frame:
    """Maps data to pixels and draws axes with ticks."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1

    def x(self, v: float) -> float:
        return L + (v - self.x0) / (self.x1 - self.x0) * (W - L - R)

    def y(self, v: float) -> float:
        return H - B - (v - self.y0) / (self.y1 - self.y0) * (H - T - B)

    def axes(self, x_label: str, y_label: str, x_time: bool = False) -> str:
        out = [f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#333"/>',
               f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#333"/>']
        for t in _ticks(self.y0, self.y1):
            y = self.y(t)
            out.append(f'<line x1="{L - 3}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{L - 5}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_fmt(t)}</text>')
        for t in _ticks(self.x0, self.x1):
            x = self.x(t)
            # A label centred on a tick near the right edge would be cut off by the SVG's border.
            anchor = "end" if x > W - R - 24 else "middle"
            label = time.strftime("%H:%M:%S", time.localtime(t)) if x_time else _fmt(t)
            out.append(f'<text x="{x:.1f}" y="{H - B + 13}" text-anchor="{anchor}" font-size="10">{label}</text>')
        out.append(f'<text x="{(L + W - R) / 2}" y="{H - 4}" text-anchor="middle" font-size="11">'
                   f'{escape(x_label)}</text>')
        out.append(f'<text x="12" y="{(T + H - B) / 2}" text-anchor="middle" font-size="11" '
                   f'transform="rotate(-90 12 {(T + H - B) / 2})">{escape(y_label)}</text>')
        return "".join(out)


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], y_label: str,
               thresholds: Mapping[str, Sequence[tuple[float, float]]] | None = None,
               y_min: float | None = 0.0, y_max: float | None = None, empty: str = "no data yet") -> str:
    """Lines over time (x = epoch seconds); dashed threshold lines in the same colour."""
    thresholds = thresholds or {}
    pts = [p for s in series.values() for p in s]
    if not pts:
        return _empty(title, empty)
    xs = [p[0] for p in pts] + [p[0] for s in thresholds.values() for p in s]
    ys = [p[1] for p in pts] + [p[1] for s in thresholds.values() for p in s]
    hi = max(ys) if y_max is None else y_max
    f = _Frame(min(xs), max(xs), min(ys) if y_min is None else y_min, hi * 1.08 if y_max is None and hi > 0 else hi)
    body = [f.axes("time", y_label, x_time=True)]
    legend = []
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if not s:
            continue
        coords = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in s)
        body.append(f'<polyline class="series" data-name="{escape(name)}" fill="none" stroke="{color}" '
                    f'stroke-width="1.8" points="{coords}"/>')
        if len(s) == 1:
            body.append(f'<circle cx="{f.x(s[0][0]):.1f}" cy="{f.y(s[0][1]):.1f}" r="3" fill="{color}"/>')
        th = thresholds.get(name)
        if th:
            coords = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in th)
            body.append(f'<polyline class="threshold" fill="none" stroke="{color}" stroke-dasharray="5,3" '
                        f'stroke-width="1" points="{coords}"/>')
        legend.append((name, color))
    for i, (name, color) in enumerate(legend):
        x = L + 8 + i * 95
        body.append(f'<rect x="{x}" y="{T + 2}" width="10" height="3" fill="{color}"/>'
                    f'<text x="{x + 14}" y="{T + 7}" font-size="10">{escape(name)}</text>')
    return _svg(title, "".join(body), len(pts))


def histogram_chart(title: str, counts: Sequence[int], x_label: str = "calibrated confidence",
                    threshold: float | None = None) -> str:
    """Equal-width bins over [0, 1]; an optional vertical line at the review threshold."""
    total = sum(counts)
    if not total:
        return _empty(title, "no classified items yet")
    f = _Frame(0.0, 1.0, 0.0, max(counts) * 1.08)
    body = [f.axes(x_label, "items")]
    width = 1.0 / len(counts)
    for i, c in enumerate(counts):
        if c:
            x, y = f.x(i * width), f.y(c)
            body.append(f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" width="{f.x(width) - f.x(0) - 1:.1f}" '
                        f'height="{f.y(0) - y:.1f}" fill="{COLORS[0]}"><title>{c}</title></rect>')
    if threshold is not None:
        body.append(f'<line class="threshold" x1="{f.x(threshold):.1f}" y1="{T}" x2="{f.x(threshold):.1f}" '
                    f'y2="{H - B}" stroke="{COLORS[1]}" stroke-dasharray="5,3"/>'
                    f'<text x="{f.x(threshold) - 3:.1f}" y="{T + 10}" text-anchor="end" font-size="10" '
                    f'fill="{COLORS[1]}">review below {threshold:g}</text>')
    return _svg(title, "".join(body), total)


def reliability_chart(title: str, bins: Sequence[Mapping[str, float]]) -> str:
    """Accuracy against mean confidence per bin, with the diagonal of perfect calibration."""
    n = int(sum(b["n"] for b in bins))
    if not n:
        return _empty(title, "no reviewer answers yet")
    f = _Frame(0.0, 1.0, 0.0, 1.0)
    body = [f.axes("model confidence", "accuracy (reviewer labels)"),
            f'<line x1="{f.x(0)}" y1="{f.y(0)}" x2="{f.x(1)}" y2="{f.y(1)}" stroke="#999" stroke-dasharray="4,3"/>']
    for b in bins:
        x0, x1 = f.x(b["lo"]), f.x(b["hi"])
        y = f.y(b["accuracy"])
        body.append(f'<rect class="bar" x="{x0 + 1:.1f}" y="{y:.1f}" width="{x1 - x0 - 2:.1f}" '
                    f'height="{f.y(0) - y:.1f}" fill="{COLORS[0]}" fill-opacity="0.35"/>'
                    f'<circle class="point" cx="{f.x(b["confidence"]):.1f}" cy="{y:.1f}" '
                    f'r="{2 + min(b["n"], 200) ** 0.5 / 2:.1f}" '
                    f'fill="{COLORS[0]}"><title>{int(b["n"])} items: confidence {b["confidence"]:.2f}, '
                    f'accuracy {b["accuracy"]:.2f}</title></circle>')
    body.append(f'<text x="{W - R - 4}" y="{H - B - 6}" text-anchor="end" font-size="10" fill="#555">'
                f'{n} answered items</text>')
    return _svg(title, "".join(body), n)
