"""The replay report as one self-contained HTML page (inline SVG, no scripts, opens offline)."""

from __future__ import annotations

import html
import math
from typing import Any

from driftloop.core.spec import Spec

COLORS = {"static": "#8a8a8a", "every_batch": "#1f77b4", "triggered": "#d62728"}


def chart(rows: list[dict[str, Any]], metric: str, width: int = 900, height: int = 320) -> str:
    """The metric per batch for each policy; a dot where that policy retrained."""
    values = [r[metric] for r in rows if r.get(metric) is not None and not math.isnan(r[metric])]
    if not values:
        return f"<p>no {html.escape(metric)} values to plot</p>"
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    batches = max(r["batch"] for r in rows)
    left, right, top, bottom = 50, 10, 10, 30

    def x(batch: int) -> float:
        return float(left + (width - left - right) * (batch - 1) / max(1, batches - 1))

    def y(value: float) -> float:
        return float(top + (height - top - bottom) * (high - value) / (high - low))

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{metric} per batch">']
    for i in range(5):
        value = low + (high - low) * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{left - 4}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:.3f}</text>"
        )
    for name in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == name and r.get(metric) is not None]
        color = COLORS.get(name, "#2ca02c")
        points = " ".join(f"{x(r['batch']):.1f},{y(r[metric]):.1f}" for r in mine)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'
        )
        for r in mine:
            if r["retrained"]:
                parts.append(
                    f'<circle cx="{x(r["batch"]):.1f}" cy="{y(r[metric]):.1f}" r="2.5" '
                    f'fill="{color}"><title>{html.escape(name)} retrained after batch '
                    f"{r['batch']}: {html.escape(str(r.get('reason') or ''))}</title></circle>"
                )
    parts.append(
        f'<text x="{(width + left) / 2:.0f}" y="{height - 6}" font-size="11" '
        'text-anchor="middle">batch (scored before it was learned from)</text></svg>'
    )
    return "".join(parts)


def render(rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], spec: Spec) -> str:
    metric = spec.metric
    shown = [metric] + (
        ["accuracy"] if spec.task == "classification" and metric != "accuracy" else []
    )
    header = "".join(f"<th>{html.escape(m)}</th>" for m in shown)
    lines = []
    for name, s in summary.items():
        cells = "".join(
            f"<td>{s['metrics'].get(m):.4f}</td>"
            if s["metrics"].get(m) is not None
            else "<td>-</td>"
            for m in shown
        )
        color = COLORS.get(name, "#2ca02c")
        lines.append(
            f'<tr><td style="color:{color}">{html.escape(name)}</td>{cells}'
            f"<td>{s['retrains']}</td><td>{s['promotions']}</td></tr>"
        )
    charts = "".join(f"<h2>{html.escape(m)} per batch</h2>{chart(rows, m)}" for m in shown)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>driftloop replay: {html.escape(spec.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}</style>
</head><body>
<h1>Replay of {html.escape(spec.name)}: three retrain policies</h1>
<p>Each batch is scored by the champion of the moment before the loop learns from it
(prequential evaluation); metrics are weighted by the rows scored. Dots mark retrains.</p>
<table><tr><th>policy</th>{header}<th>retrains</th><th>promotions</th></tr>{"".join(lines)}</table>
{charts}
</body></html>
"""
