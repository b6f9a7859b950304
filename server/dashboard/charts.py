"""A tiny server-rendered SVG line chart: no script, every label escaped."""

from __future__ import annotations

import math
from collections.abc import Callable

from markupsafe import Markup, escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 140, 12, 28  # room for the y ticks, the legend and the x ticks


def number(value: float) -> str:
    return f"{value:.3g}"


def _span(low: float, high: float) -> tuple[float, float]:
    return (low - 1, high + 1) if low == high else (low, high)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    y_range: tuple[float, float] | None = None,
    x_text: Callable[[float], str] = number,
) -> Markup:
    """Lines for named series of (x, y) points; non-finite points are left out."""
    clean = {
        name: sorted((x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)) for name, pts in series.items()
    }
    clean = {name: pts for name, pts in clean.items() if pts}
    if not clean:
        return Markup('<p class="empty">No data yet.</p>')
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1 = _span(min(xs), max(xs))
    y0, y1 = _span(*(y_range or (min(ys), max(ys))))

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)

    def sy(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)

    label = escape(title)
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{label}"><title>{label}</title>',
        f'<line x1="{LEFT}" y1="{sy(y0):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(y0):.1f}" stroke="#888"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{sy(y0):.1f}" stroke="#888"/>',
    ]
    for y in (y0, (y0 + y1) / 2, y1):
        out.append(f'<text x="{LEFT - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{escape(number(y))}</text>')
    ends = ((min(xs), "start"), (max(xs), "end")) if min(xs) != max(xs) else ((min(xs), "middle"),)
    for x, anchor in ends:
        out.append(f'<text x="{sx(x):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{escape(x_text(x))}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for x, y in pts if len(pts) <= 60 else pts[-1:]:
            tip = escape(f"{name}: {x_text(x)} → {number(y)}")
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"><title>{tip}</title></circle>')
        out.append(f'<text x="{WIDTH - RIGHT + 8}" y="{TOP + 12 + 16 * i}" fill="{color}">{escape(name[:24])}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def interval_chart(difference: float, low: float, high: float, floor: float, confidence: float) -> Markup:
    """The gate's paired interval on (adapter - base) pass rate, on [-1, 1], with the line its lower
    end must not cross (-tolerance)."""
    width, height, pad = 640, 70, 24

    def sx(x: float) -> float:
        return pad + (min(max(x, -1.0), 1.0) + 1) / 2 * (width - 2 * pad)

    label = escape(f"{confidence:.0%} interval of the pass-rate difference: [{low:+.3f}, {high:+.3f}]")
    out = [
        f'<svg class="chart interval" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><title>{label}</title>',
        f'<line x1="{pad}" y1="40" x2="{width - pad}" y2="40" stroke="#888"/>',
    ]
    for x in (-1.0, -0.5, 0.0, 0.5, 1.0):
        out.append(f'<text x="{sx(x):.1f}" y="62" text-anchor="middle">{x:+.1f}</text>')
    out.append(f'<line class="floor" x1="{sx(floor):.1f}" y1="10" x2="{sx(floor):.1f}" y2="50" stroke="#d62728"/>')
    out.append(f'<text x="{sx(floor) + 4:.1f}" y="14" fill="#d62728">-tolerance</text>')
    out.append(
        f'<line class="ci" x1="{sx(low):.1f}" y1="32" x2="{sx(high):.1f}" y2="32" stroke="#1f77b4" stroke-width="6"/>'
    )
    out.append(f'<circle cx="{sx(difference):.1f}" cy="32" r="5" fill="#000"/>')
    out.append("</svg>")
    return Markup("".join(out))
