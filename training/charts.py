"""Server-rendered SVG charts: axes, ticks, labels and lines, no JavaScript and no inline styles.

The page's Content-Security-Policy forbids style attributes, so colours and strokes are SVG
presentation attributes (`stroke=`, `fill=`); numbers are formatted here and every label is
escaped. Egress draws its ROC plot with the same pieces (egress/charts.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 560, 320
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 18, 18, 46
INK, MUTED, GRID = "#111827", "#6b7280", "#e5e7eb"
PALETTE = ("#0f766e", "#b45309", "#7c3aed", "#be123c", "#2563eb", "#4d7c0f")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2 or 5 times a power of ten apart)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Frame:
    """The plotting area and the data range it maps; `x()`/`y()` turn data into pixels."""

    x_ticks: list[float]
    y_ticks: list[float]
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> float:
        return MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - MARGIN_RIGHT

    @property
    def top(self) -> float:
        return MARGIN_TOP

    @property
    def bottom(self) -> float:
        return self.height - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        lo, hi = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - lo) / ((hi - lo) or 1) * (self.right - self.left)

    def y(self, value: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return self.bottom - (value - lo) / ((hi - lo) or 1) * (self.bottom - self.top)


def axes(frame: Frame, *, x_label: str, y_label: str) -> list[str]:
    """Grid lines, tick labels, both axes and their titles."""
    parts = []
    for tick in frame.y_ticks:
        y = frame.y(tick)
        parts.append(f'<line x1="{frame.left:.1f}" y1="{y:.1f}" x2="{frame.right:.1f}" y2="{y:.1f}" stroke="{GRID}" stroke-width="1"/>')
        parts.append(f'<text x="{frame.left - 8:.1f}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="{MUTED}">{_fmt(tick)}</text>')
    for tick in frame.x_ticks:
        x = frame.x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{frame.bottom:.1f}" x2="{x:.1f}" y2="{frame.bottom + 5:.1f}" stroke="{MUTED}" stroke-width="1"/>')
        parts.append(f'<text x="{x:.1f}" y="{frame.bottom + 18:.1f}" text-anchor="middle" font-size="12" fill="{MUTED}">{_fmt(tick)}</text>')
    parts.append(f'<line x1="{frame.left:.1f}" y1="{frame.top:.1f}" x2="{frame.left:.1f}" y2="{frame.bottom:.1f}" stroke="{INK}" stroke-width="1"/>')
    parts.append(f'<line x1="{frame.left:.1f}" y1="{frame.bottom:.1f}" x2="{frame.right:.1f}" y2="{frame.bottom:.1f}" stroke="{INK}" stroke-width="1"/>')
    middle_x = (frame.left + frame.right) / 2
    middle_y = (frame.top + frame.bottom) / 2
    parts.append(f'<text x="{middle_x:.1f}" y="{frame.height - 8:.1f}" text-anchor="middle" font-size="13" fill="{INK}">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{middle_y:.1f}" text-anchor="middle" font-size="13" fill="{INK}" '
                 f'transform="rotate(-90 14 {middle_y:.1f})">{escape(y_label)}</text>')
    return parts


def polyline(frame: Frame, points: Iterable[Sequence[float]], *, colour: str, width: float = 2.0,
             dash: str | None = None) -> str:
    coordinates = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<polyline points="{coordinates}" fill="none" stroke="{colour}" stroke-width="{width}" '
            f'stroke-linejoin="round" stroke-linecap="round"{dashed}/>')


def legend(frame: Frame, entries: Sequence[tuple[str, str]], *, corner: str = "bottom-right") -> list[str]:
    """Colour swatches and labels, stacked in one corner of the plotting area."""
    parts = []
    row = 18
    box_width = 10 + max((len(label) for label, _ in entries), default=0) * 7.0 + 28
    x = frame.right - box_width - 6 if corner.endswith("right") else frame.left + 10
    y0 = frame.bottom - row * len(entries) - 8 if corner.startswith("bottom") else frame.top + 8
    parts.append(f'<rect x="{x:.1f}" y="{y0:.1f}" width="{box_width:.1f}" height="{row * len(entries) + 6}" '
                 f'fill="#ffffff" fill-opacity="0.9" stroke="{GRID}" rx="4"/>')
    for index, (label, colour) in enumerate(entries):
        y = y0 + 12 + index * row
        parts.append(f'<line x1="{x + 8:.1f}" y1="{y:.1f}" x2="{x + 26:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{x + 32:.1f}" y="{y + 4:.1f}" font-size="12" fill="{INK}">{escape(label)}</text>')
    return parts


def svg(frame: Frame, parts: list[str], *, title: str) -> SafeString:
    body = "".join(parts)
    return mark_safe(
        f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif"><title>{escape(title)}</title>{body}</svg>'
    )


def empty_svg(message: str, *, title: str) -> SafeString:
    frame = Frame([0.0, 1.0], [0.0, 1.0], height=120)
    return svg(frame, [f'<rect x="0.5" y="0.5" width="{frame.width - 1}" height="119" fill="#f8fafc" stroke="{GRID}" rx="6"/>',
                       f'<text x="{frame.width / 2:.0f}" y="64" text-anchor="middle" font-size="13" fill="{MUTED}">{escape(message)}</text>'],
               title=title)


def line_svg(points: Sequence[Sequence[float]], *, x_label: str = "Step", y_label: str = "Training loss",
             title: str = "Training loss by step", colour: str = PALETTE[0]) -> SafeString:
    """A line chart of [x, y] points (a job's loss curve), with round ticks on both axes."""
    clean = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not clean:
        return empty_svg("No points yet.", title=title)
    xs, ys = [x for x, _ in clean], [y for _, y in clean]
    y_low = 0.0 if min(ys) >= 0 and min(ys) < 0.25 * max(ys) else min(ys)
    frame = Frame(nice_ticks(min(xs), max(xs)), nice_ticks(y_low, max(ys)))
    parts = axes(frame, x_label=x_label, y_label=y_label)
    parts.append(polyline(frame, clean, colour=colour))
    if len(clean) == 1:
        x, y = clean[0]
        parts.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" fill="{colour}"/>')
    return svg(frame, parts, title=title)
