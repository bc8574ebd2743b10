"""The dashboard's charts: inline SVG built on the server, no charting library.

Four kinds are enough (stacked bars per batch, a heatmap of batches by features, a line
with an interval band, a step line of the champion's metric) and drawn here they cost the
page nothing to load: no script to fetch or run before a chart shows, no licence to track,
nothing from a CDN. Every function is pure (values in, markup out) and escapes every text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

OK, BAD, DUP, REF, EST, INK, GRID = (
    "#2e7d32",
    "#e07b00",
    "#9e9e9e",
    "#4c78a8",
    "#9467bd",
    "#333",
    "#ddd",
)
DRIFT = "#c0392b"


@dataclass(frozen=True)
class Bar:
    """One batch's rows: ``ok`` + ``quarantined`` + ``duplicate`` stacked."""

    label: str
    ok: int
    quarantined: int
    duplicate: int
    href: str
    failed: bool = False


def _svg(width: int, height: int, label: str, body: str, css: str = "chart") -> Markup:
    return Markup(  # every text inside is escaped where it is built
        f'<svg class="{css}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}">{body}</svg>'
    )


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k" if abs(value) < 1e6 else f"{value / 1e6:.3g}M"
    return f"{value:.3g}"


def batch_bars(bars: Sequence[Bar], *, height: int = 180) -> Markup:
    """A stacked bar per batch (oldest left), each a link to the batch."""
    if not bars:
        return Markup("")
    left, bottom, top_pad = 44, 34, 8
    slot = max(6, min(28, 900 // len(bars)))
    width = left + slot * len(bars) + 8
    top = max(max(b.ok + b.quarantined + b.duplicate for b in bars), 1)
    scale = (height - bottom - top_pad) / top
    parts = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        f'stroke="{INK}"/>',
        f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end" font-size="10">'
        f"{_num(top)}</text>",
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" font-size="10">0</text>',
    ]
    for i, b in enumerate(bars):
        x = left + i * slot + 1
        y = float(height - bottom)
        rects = []
        for value, color, name in (
            (b.ok, OK, "ok"),
            (b.quarantined, BAD, "quarantined"),
            (b.duplicate, DUP, "duplicate"),
        ):
            h = value * scale
            if value:
                y -= h
                rects.append(
                    f'<rect class="seg-{name}" x="{x}" y="{y:.1f}" width="{slot - 2}" '
                    f'height="{max(h, 1):.1f}" fill="{color}"/>'
                )
        if b.failed:
            rects.append(
                f'<rect class="seg-failed" x="{x}" y="{height - bottom - 4}" width="{slot - 2}" '
                f'height="4" fill="{DRIFT}"/>'
            )
        title = f"{b.label}: {b.ok} ok, {b.quarantined} quarantined, {b.duplicate} duplicate" + (
            " (prep failed)" if b.failed else ""
        )
        parts.append(
            f'<a href="{escape(b.href)}" class="bar"><title>{escape(title)}</title>'
            f"{''.join(rects)}"
            f'<rect x="{x}" y="{top_pad}" width="{slot - 2}" height="{height - bottom - top_pad}" '
            'fill="transparent"/></a>'
        )
    step = max(1, math.ceil(100 / slot))  # labels 100 px apart at least: no overlaps
    for i in range(0, len(bars), step):
        mid = left + i * slot + slot / 2
        parts.append(
            f'<text x="{mid:.1f}" y="{height - bottom + 14}" text-anchor="middle" '
            f'font-size="10">{escape(bars[i].label[:16])}</text>'
        )
    return _svg(width, height, "rows per batch: ok, quarantined, duplicate", "".join(parts))


def heatmap(
    rows: Sequence[str],
    columns: Sequence[str],
    cells: dict[tuple[str, str], tuple[float | None, bool]],
    links: dict[str, str],
) -> Markup:
    """Batches (rows, oldest first) by features: each cell's drift score (the effect above
    its noise floor over the effect threshold: 1 is the threshold), red where the test
    decided drift, blue shades below; an empty cell where the batch was not checked."""
    if not rows or not columns:
        return Markup("")
    label_w, head_h, cell_w, cell_h = 130, 90, 34, 16
    width = label_w + cell_w * len(columns) + 70  # room for the last names, slanted
    height = head_h + cell_h * len(rows) + 4
    parts = []
    for j, name in enumerate(columns):
        x = label_w + j * cell_w + cell_w / 2
        parts.append(
            f'<text x="{x:.1f}" y="{head_h - 6}" font-size="10" '
            f'transform="rotate(-50 {x:.1f} {head_h - 6})">{escape(name[:18])}</text>'
        )
    for i, batch in enumerate(rows):
        y = head_h + i * cell_h
        parts.append(
            f'<a href="{escape(links.get(batch, "#"))}"><text x="{label_w - 4}" y="{y + 12}" '
            f'font-size="10" text-anchor="end">{escape(batch[:20])}</text></a>'
        )
        for j, name in enumerate(columns):
            found = cells.get((batch, name))
            if found is None:
                continue
            score, drifted = found
            x = label_w + j * cell_w
            color = DRIFT if drifted else _blue(score)
            shown = "-" if score is None else f"{score:.2f}"
            parts.append(
                f'<rect class="cell{" drift" if drifted else ""}" x="{x}" y="{y}" '
                f'width="{cell_w - 1}" height="{cell_h - 1}" fill="{color}">'
                f"<title>{escape(batch)} {escape(name)}: {shown}"
                f"{' (drift)' if drifted else ''}</title></rect>"
            )
    return _svg(width, height, "drift score per feature and batch", "".join(parts), "heatmap")


def _blue(score: float | None) -> str:
    if score is None or not math.isfinite(score):
        return "#eee"
    t = max(0.0, min(score, 1.0))
    # white (0) to a strong blue (at the threshold)
    r, g, b = (int(255 + (c - 255) * t) for c in (76, 120, 168))
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class Point:
    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    flagged: bool = False


def line_chart(
    series: dict[str, Sequence[Point]],
    *,
    colors: Sequence[str] = (REF, EST, OK),
    reference: float | None = None,
    reference_label: str = "",
    width: int = 720,
    height: int = 200,
) -> Markup:
    """One line per series over a shared x axis (the labels of the first series), each with
    its interval drawn as a band; flagged points as red dots; an optional dashed reference."""
    labels: list[str] = []
    for points in series.values():
        for p in points:
            if p.label not in labels:
                labels.append(p.label)
    values = [
        v
        for points in series.values()
        for p in points
        for v in (p.value, p.low, p.high)
        if v is not None and math.isfinite(v)
    ]
    if reference is not None:
        values.append(reference)
    if not labels or not values:
        return Markup("")
    left, right, top_pad, bottom = 50, 10, 10, 30
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    at = {label: i for i, label in enumerate(labels)}

    def x(label: str) -> float:
        return left + (at[label] + 0.5) * plot_w / len(labels)

    def y(value: float) -> float:
        return top_pad + (hi - value) / (hi - lo) * plot_h

    parts = [
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" '
        f'y2="{top_pad + plot_h}" stroke="{INK}"/>',
        f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end" font-size="10">{hi:.3g}</text>',
        f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" font-size="10">'
        f"{lo:.3g}</text>",
    ]
    if reference is not None:
        parts.append(
            f'<line x1="{left}" y1="{y(reference):.1f}" x2="{width - right}" '
            f'y2="{y(reference):.1f}" stroke="{DRIFT}" stroke-dasharray="4 3"/>'
            f'<text x="{width - right - 2}" y="{y(reference) - 3:.1f}" text-anchor="end" '
            f'font-size="10" fill="{DRIFT}">{escape(reference_label)}</text>'
        )
    legend_x = left + 6
    for k, (name, points) in enumerate(series.items()):
        color = colors[k % len(colors)]
        shown = [p for p in points if p.value is not None and math.isfinite(p.value)]
        band = [p for p in shown if p.low is not None and p.high is not None]
        if len(band) >= 2:
            upper = " ".join(f"{x(p.label):.1f},{y(p.high):.1f}" for p in band)  # type: ignore[arg-type]
            lower = " ".join(
                f"{x(p.label):.1f},{y(p.low):.1f}"  # type: ignore[arg-type]
                for p in reversed(band)
            )
            parts.append(
                f'<polygon class="band" points="{upper} {lower}" fill="{color}" '
                'fill-opacity="0.18" stroke="none"/>'
            )
        for p in band:  # whiskers show a single point's interval too
            parts.append(
                f'<line x1="{x(p.label):.1f}" y1="{y(p.low):.1f}" x2="{x(p.label):.1f}" '  # type: ignore[arg-type]
                f'y2="{y(p.high):.1f}" stroke="{color}" stroke-opacity="0.5"/>'  # type: ignore[arg-type]
            )
        if len(shown) >= 2:
            line = " ".join(f"{x(p.label):.1f},{y(p.value):.1f}" for p in shown)  # type: ignore[arg-type]
            parts.append(
                f'<polyline class="line" points="{line}" fill="none" stroke="{color}" '
                'stroke-width="2"/>'
            )
        for p in shown:
            fill = DRIFT if p.flagged else color
            parts.append(
                f'<circle class="point" cx="{x(p.label):.1f}" cy="{y(p.value):.1f}" r="3.5" '  # type: ignore[arg-type]
                f'fill="{fill}"><title>{escape(name)} {escape(p.label)}: {p.value:.4g}'
                + (
                    f" [{p.low:.4g}, {p.high:.4g}]"
                    if p.low is not None and p.high is not None
                    else ""
                )
                + "</title></circle>"
            )
        parts.append(
            f'<rect x="{legend_x}" y="{top_pad}" width="10" height="10" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="{top_pad + 9}" font-size="10">{escape(name)}</text>'
        )
        legend_x += 22 + 7 * len(name)
    step = max(1, len(labels) // 6)
    for i in range(0, len(labels), step):
        parts.append(
            f'<text x="{x(labels[i]):.1f}" y="{height - 12}" text-anchor="middle" '
            f'font-size="10">{escape(labels[i][:16])}</text>'
        )
    return _svg(width, height, ", ".join(series), "".join(parts))
