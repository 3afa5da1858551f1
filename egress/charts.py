"""The review page's charts as server-rendered SVG: the membership-inference ROC curves, and the
training loss curve (drawn by training's line chart, re-exported here)."""

from __future__ import annotations

from typing import Mapping, Sequence

from django.utils.safestring import SafeString

from training.charts import GRID, MUTED, PALETTE, Frame, axes, empty_svg, legend, line_svg, polyline, svg

__all__ = ["line_svg", "roc_svg"]

_UNIT_TICKS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def roc_svg(points_by_attack: Mapping[str, Sequence[Sequence[float]]], *,
            title: str = "Membership-inference ROC curves") -> SafeString:
    """One ROC curve per attack ([false-positive rate, true-positive rate] points), the chance
    diagonal dashed; a curve hugging the diagonal means the attack cannot tell members apart."""
    curves = {name: sorted((float(x), float(y)) for x, y in points) for name, points in points_by_attack.items() if points}
    if not curves:
        return empty_svg("The audit reported no ROC points.", title=title)
    frame = Frame(_UNIT_TICKS, _UNIT_TICKS, width=500, height=420)
    parts = axes(frame, x_label="False-positive rate (non-members flagged)", y_label="True-positive rate (members found)")
    parts.append(polyline(frame, [(0, 0), (1, 1)], colour=MUTED, width=1.2, dash="5 4"))
    entries = []
    for index, (name, points) in enumerate(curves.items()):
        colour = PALETTE[index % len(PALETTE)]
        if points[0] != (0.0, 0.0):
            points.insert(0, (0.0, 0.0))
        if points[-1] != (1.0, 1.0):
            points.append((1.0, 1.0))
        parts.append(polyline(frame, points, colour=colour))
        entries.append((name, colour))
    entries.append(("chance", MUTED))
    parts.extend(legend(frame, entries, corner="bottom-right"))
    parts.append(f'<rect x="{frame.left:.1f}" y="{frame.top:.1f}" width="{frame.right - frame.left:.1f}" '
                 f'height="{frame.bottom - frame.top:.1f}" fill="none" stroke="{GRID}"/>')
    return svg(frame, parts, title=title)
