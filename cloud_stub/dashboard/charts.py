"""Charts drawn on the server as SVG: no script, no build step, readable without either.

The SVG scales to its container's width (viewBox); colours come from the stylesheet's classes
(the pages' Content-Security-Policy allows no inline style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 28


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float]
    css: str  # the stylesheet class that colours it


def _nice_max(value: float) -> float:
    """A round top for the axis: 1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _label(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{round(value, 2):g}"


def chart(title: str, days: list[str], series: list[Series], kind: str = "bars", unit: str = "") -> Markup:
    """Bars (side by side per day) or lines, one per series, over `days` (YYYY-MM-DD)."""
    highest = max((v for s in series for v in s.values), default=0)
    top = _nice_max(highest)
    if all(float(v).is_integer() for s in series for v in s.values) and top < 40:
        top = 4 * math.ceil(top / 4)  # counts of a few: whole numbers on the four grid lines, not 0.25 of a flag
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(days))
    slot = plot_w / n

    def y(v: float) -> float:
        return TOP + plot_h - (max(0.0, v) / top) * plot_h

    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>"]
    for k in range(5):  # the grid and the y axis' labels
        value = top * k / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                   f"{escape(_label(value))}{escape(unit)}</text>")
    every = max(1, n // 6)  # at most about seven dates under the axis
    for i, day in enumerate(days):
        if i % every == 0:
            out.append(f'<text class="axis" x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - 8}" '
                       f'text-anchor="middle">{escape(day[5:])}</text>')
    if kind == "bars":
        width = slot * 0.8 / max(1, len(series))
        for j, s in enumerate(series):
            for i, v in enumerate(s.values):
                if v <= 0:
                    continue
                x = LEFT + slot * i + slot * 0.1 + width * j
                out.append(f'<rect class="{s.css}" x="{x:.1f}" y="{y(v):.1f}" width="{max(width, 0.5):.1f}" '
                           f'height="{TOP + plot_h - y(v):.1f}"><title>{escape(days[i])} {escape(s.name)}: '
                           f"{v:g}{escape(unit)}</title></rect>")
    else:
        for s in series:
            points = " ".join(f"{LEFT + slot * (i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
            out.append(f'<polyline class="{s.css} line" fill="none" points="{points}"/>')
    out.append("</svg>")
    legend = "".join(f'<span class="key {s.css}">{escape(s.name)}</span>' for s in series)
    return Markup(f'<figure class="chart-box"><figcaption>{escape(title)} {legend}</figcaption>'
                  + "".join(out) + "</figure>")
