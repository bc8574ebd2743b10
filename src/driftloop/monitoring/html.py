"""The HTML report: one self-contained page (inline CSS and SVG, no script, no network).

Plots are drawn as SVG here rather than by a plotting library: three simple chart kinds
(paired histograms, bars against a threshold line, a line with a band) need no dependency,
render instantly and keep the page small and readable offline.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from driftloop.monitoring.performance import decay_bound, tolerance_text

REF, CUR, BAD, OK, INK = "#4c78a8", "#f58518", "#c0392b", "#2e7d32", "#333"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return escape(str(value))


def distribution_svg(plot: dict[str, Any], width: int = 320, height: int = 120) -> str:
    """Reference and current shares side by side per bin (or category)."""
    if not plot:
        return ""
    ref = [v if _defined(v) else 0.0 for v in plot["reference"]]
    cur = [v if _defined(v) else 0.0 for v in plot["current"]]
    n = len(ref)
    top = max([*ref, *cur, 1e-12])
    pad = 18
    slot = (width - 2) / n
    bars = []
    for i, (r, c) in enumerate(zip(ref, cur, strict=True)):
        x = 1 + i * slot
        for j, (share, color) in enumerate(((r, REF), (c, CUR))):
            h = (height - pad) * share / top
            bars.append(
                f'<rect x="{x + j * slot / 2:.1f}" y="{height - pad - h:.1f}" '
                f'width="{max(slot / 2 - 0.5, 0.5):.1f}" height="{h:.1f}" fill="{color}"/>'
            )
    if plot["kind"] == "numeric":
        edges = plot["edges"]
        axis = f"{_fmt(edges[0], 3)} ... {_fmt(edges[-1], 3)}"
    else:
        shown = ", ".join(escape(c) for c in plot["categories"][:6])
        axis = shown + (" ..." if len(plot["categories"]) > 6 else "")
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="reference vs current distribution">'
        f"{''.join(bars)}"
        f'<line x1="0" y1="{height - pad}" x2="{width}" y2="{height - pad}" stroke="{INK}"/>'
        f'<text x="2" y="{height - 4}" font-size="10" fill="{INK}">{axis}</text></svg>'
    )


def scores_svg(columns: list[dict[str, Any]], width: int = 640) -> str:
    """Each tested column's effect (minus its noise floor) against its effect threshold."""
    tested = [c for c in columns if c.get("effect") is not None]
    if not tested:
        return ""
    row, label_w = 18, 170
    height = row * len(tested) + 24
    scale = (width - label_w - 170) / 3.0  # bars run to 3x the threshold; room for labels
    parts = []
    for i, c in enumerate(tested):
        y = 8 + i * row
        corrected = (c["effect"] or 0.0) - (c["noise_floor"] or 0.0)
        ratio = max(0.0, corrected) / c["effect_threshold"] if c["effect_threshold"] else 0.0
        w = min(ratio, 3.0) * scale
        color = BAD if c["drift"] else (CUR if ratio >= 1 else REF)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end" '
            f'fill="{INK}">{escape(c["column"])}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row - 6}" '
            f'fill="{color}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="10" fill="{INK}">'
            f"{_fmt(corrected, 3)} / {_fmt(c['effect_threshold'], 2)} "
            f"p={_fmt(c['p_value'], 2)}</text>"
        )
    x1 = label_w + scale
    parts.append(
        f'<line x1="{x1:.1f}" y1="0" x2="{x1:.1f}" y2="{height - 14}" stroke="{BAD}" '
        f'stroke-dasharray="4 3"/><text x="{x1 + 3:.1f}" y="{height - 2}" font-size="10" '
        f'fill="{BAD}">effect threshold</text>'
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="effect sizes against thresholds">{"".join(parts)}</svg>'
    )


def _defined(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def axis_label(value: float) -> str:
    """A y-axis tick: plain digits (500, 12,345, 0.853), never scientific notation."""
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10 or value == 0:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    if size >= 0.01:
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _tolerance_note(perf: dict[str, Any]) -> str:
    """The tolerance, its kind, and the value past which a window decayed."""
    note = f"tolerance {tolerance_text(perf['metric'], perf['tolerance'])}"
    bound = perf.get("decay_bound")
    if not _defined(bound):
        return note + "."
    side = "below" if perf["higher_is_better"] else "above"
    return f"{note}: decayed {side} {_fmt(bound)}."


def performance_svg(
    perf: dict[str, Any],
    estimate: dict[str, Any] | None,
    width: int = 640,
    *,
    x_title: str = "window",
) -> str:
    """The metric per window with its interval, the holdout value and the tolerance. A
    window whose metric is undefined (null: for example labels the model never saw) is left
    out of the line and marked on the axis; with none defined there is no chart."""
    windows = perf["windows"]
    defined = [i for i, w in enumerate(windows) if _defined(w["value"])]
    if not defined:
        return ""
    height, pad_b = 240, 44
    values = [
        v for i in defined for v in (windows[i]["low"], windows[i]["high"], windows[i]["value"])
    ]
    holdout, tolerance = perf["holdout"], perf["tolerance"]
    bound = None
    if _defined(holdout):
        bound = decay_bound(perf["metric"], holdout, tolerance)
        values += [holdout, bound]
    est = [w.get(perf["metric"]) for w in (estimate or {}).get("windows", [])]
    values += [v for v in est if _defined(v)]
    values = [v for v in values if _defined(v)]
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi):
        lo, hi = lo - 0.5, hi + 0.5
    ticks = [lo + (hi - lo) * k / 4 for k in range(5)]
    labels = [axis_label(v) for v in ticks]
    pad_l = 14 + 6 * max(len(t) for t in labels)  # room for the longest tick: never clipped
    n = len(windows)

    def x(i: int) -> float:
        return pad_l + (width - pad_l - 10) * (i + 0.5) / n

    def y(v: float) -> float:
        return float(10 + (height - pad_b - 10) * (hi - v) / (hi - lo))

    parts = []
    banded = [i for i in defined if _defined(windows[i]["low"]) and _defined(windows[i]["high"])]
    if banded:
        band = " ".join(f"{x(i):.1f},{y(windows[i]['high']):.1f}" for i in banded)
        band += " " + " ".join(f"{x(i):.1f},{y(windows[i]['low']):.1f}" for i in reversed(banded))
        parts.append(f'<polygon points="{band}" fill="{REF}" opacity="0.2"/>')
    line = " ".join(f"{x(i):.1f},{y(windows[i]['value']):.1f}" for i in defined)
    parts.append(f'<polyline points="{line}" fill="none" stroke="{REF}" stroke-width="2"/>')
    for i, w in enumerate(windows):
        if i in defined:
            color = BAD if w["decayed"] else REF
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(w["value"]):.1f}" r="3" fill="{color}"/>')
        else:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - pad_b - 3}" font-size="10" '
                f'text-anchor="middle" fill="{BAD}">undefined</text>'
            )
    if est and len(est) == n and all(_defined(v) for v in est):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(est))
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{CUR}" stroke-dasharray="5 3"/>'
        )
    if _defined(holdout) and bound is not None:
        parts.append(
            f'<line x1="{pad_l}" y1="{y(holdout):.1f}" x2="{width - 10}" y2="{y(holdout):.1f}" '
            f'stroke="{OK}"/><text x="{pad_l + 2}" y="{y(holdout) - 3:.1f}" font-size="10" '
            f'fill="{OK}">holdout {axis_label(holdout)}</text>'
        )
        parts.append(
            f'<line x1="{pad_l}" y1="{y(bound):.1f}" x2="{width - 10}" y2="{y(bound):.1f}" '
            f'stroke="{BAD}" stroke-dasharray="4 3"/><text x="{pad_l + 2}" '
            f'y="{y(bound) + 11:.1f}" font-size="10" fill="{BAD}">tolerance</text>'
        )
    for v, label in zip(ticks, labels, strict=True):
        parts.append(
            f'<text x="{pad_l - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<line x1="{pad_l - 2}" y1="{y(v):.1f}" x2="{pad_l}" y2="{y(v):.1f}" stroke="{INK}"/>'
        )
    base = height - pad_b
    parts.append(
        f'<line x1="{pad_l}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="{INK}"/>'
        f'<line x1="{pad_l}" y1="10" x2="{pad_l}" y2="{base}" stroke="{INK}"/>'
    )
    shown = sorted({round(k * (n - 1) / 4) for k in range(5)}) if n > 5 else list(range(n))
    for i in shown:
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        parts.append(
            f'<line x1="{x(i):.1f}" y1="{base}" x2="{x(i):.1f}" y2="{base + 3}" stroke="{INK}"/>'
            f'<text x="{x(i):.1f}" y="{base + 14}" font-size="10" text-anchor="{anchor}">'
            f"{escape(windows[i]['window'])}</text>"
        )
    parts.append(
        f'<text x="{(pad_l + width) / 2:.1f}" y="{height - 6}" font-size="10" '
        f'text-anchor="middle" fill="#777">{escape(x_title)}</text>'
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="performance over time">{"".join(parts)}</svg>'
    )


def _undefined_note(perf: dict[str, Any]) -> str:
    """Why the metric has no value, overall and in how many windows (with each reason)."""
    metric = escape(perf["metric"])
    note = ""
    overall = perf["overall"]
    if not _defined(overall["value"]):
        why = overall.get("undefined_reason") or "it could not be computed"
        note += f"<b>{metric} is undefined</b>: {escape(why)}. "
    undefined = [w for w in perf["windows"] if not _defined(w["value"])]
    if undefined:
        reasons = sorted({w.get("undefined_reason") or "not computable" for w in undefined})
        note += (
            f"{len(undefined)} window(s) where {metric} is undefined: "
            f"{escape('; '.join(reasons[:3]))}{' ...' if len(reasons) > 3 else ''}. "
        )
    return note


CSS = """
body{font-family:system-ui,sans-serif;color:#333;margin:2em;max-width:1100px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;
padding:3px 8px;text-align:left;vertical-align:top}.drift{color:#c0392b;font-weight:600}
td.muted{min-width:300px}.ok{color:#2e7d32}.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #ddd;
padding:6px;border-radius:4px}.muted{color:#777;font-size:12px}.key span{display:inline-block;
width:10px;height:10px;margin:0 4px 0 10px}
"""


def _column_rows(columns: list[dict[str, Any]]) -> str:
    rows = []
    for c in columns:
        verdict = '<span class="drift">DRIFT</span>' if c["drift"] else '<span class="ok">ok</span>'
        rows.append(
            f"<tr><td>{escape(c['column'])}</td><td>{escape(c['role'])}</td>"
            f"<td>{_fmt(c['test_name'])}</td><td>{_fmt(c['value'])}</td>"
            f"<td>{_fmt(c['threshold'])}</td><td>{_fmt(c['value_drift'])}</td>"
            f"<td>{_fmt(c['effect'])}</td><td>{_fmt(c['noise_floor'], 2)}</td>"
            f"<td>{_fmt(c['p_value'], 3)}</td><td>{verdict}</td>"
            f"<td class='muted'>{escape(c['reason'])}</td></tr>"
        )
    head = (
        "<tr><th>column</th><th>role</th><th>test</th><th>value</th><th>threshold</th>"
        "<th>fixed-threshold drift</th><th>effect</th><th>noise floor</th>"
        "<th>permutation p</th><th>driftloop</th><th>why</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _prep_part(prep: dict[str, Any] | None) -> str:
    """A raw file's prep: what was scored, and why the other rows were not."""
    if not prep:
        return ""
    items = "".join(
        f"<li>{r['rows']:,} row(s): {escape(r['reason'])}"
        + (f" (e.g. {escape(str(r['example']))})" if r.get("example") else "")
        + "</li>"
        for r in prep["quarantine_reasons"]
    )
    more = f"<li>... {prep['more_reasons']} more reason(s)</li>" if prep["more_reasons"] else ""
    return (
        f"<p>Prep of the raw file (the source's reading, cleaning and contract): "
        f"{prep['rows_in']:,} rows in, {prep['rows_ok']:,} scored, "
        f"{prep['rows_quarantined']:,} quarantined and {prep['rows_duplicate']:,} duplicate "
        f"(not scored).</p><ul>{items}{more}</ul>"
    )


def render(report: dict[str, Any]) -> str:
    model, cur, drift = report["model"], report["current"], report["data_drift"]
    summary = report["summary"]
    extra = [c for c in (report.get("target_drift"), report.get("prediction_drift")) if c]
    columns = drift["columns"] + extra
    where = cur.get("path") or f"prediction log {cur['window']['since']} - {cur['window']['until']}"
    status = summary.get("headline") or (
        "drift detected" if summary["drift_detected"] else "no drift"
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>driftloop monitoring: {escape(model['name'])} v{escape(model['version'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(model['name'])} v{escape(model['version'])}: {escape(status)}</h1>",
        f"<p>Reference: {report['reference']['rows']:,} training rows "
        f"({escape(report['reference']['source'])}). Current: {escape(str(where))}, "
        f"{cur['rows']:,} rows. Generated {escape(report['generated_at'])}; exit code "
        f"{summary['exit_code']}.</p>",
        _prep_part(cur.get("prep")),
        "<ul>" + "".join(f"<li>{escape(m)}</li>" for m in summary["messages"]) + "</ul>",
        "<h2>Effect sizes against thresholds</h2>",
        "<p class='muted'>Each bar is the effect minus what sampling alone gives (noise "
        "floor); a column drifts when it passes its threshold and the permutation p-value is "
        f"below {report['settings']['alpha']}.</p>",
        scores_svg(columns),
        "<h2>Columns</h2>",
        _column_rows(columns),
    ]
    perf = report.get("performance")
    estimate = report.get("estimated_performance")
    if perf:
        o = perf["overall"]
        parts += [
            "<h2>Performance over time (realized, from labels)</h2>",
            f"<p>{escape(perf['metric'])} on {perf['rows']:,} labelled rows: {_fmt(o['value'])} "
            f"[{_fmt(o['low'])}, {_fmt(o['high'])}] ({perf['confidence']:.0%} interval) vs "
            f"holdout {_fmt(perf['holdout'])}; {escape(_tolerance_note(perf))} "
            + _undefined_note(perf)
            + f"{'<span class=drift>DEGRADED</span>' if perf['degraded'] else 'Not degraded.'}</p>",
            performance_svg(
                perf,
                estimate,
                x_title=(
                    "time (the first row of each window)"
                    if perf.get("window_axis") == "time"
                    else "rows, in the order they came"
                ),
            ),
            f"<p class='key'><span style='background:{REF}'></span>realized, with its "
            f"interval (band); red points: decayed windows"
            + (
                f"<span style='background:{CUR}'></span>estimated {escape(perf['metric'])} "
                "(dashed, no labels used)"
                if estimate
                else ""
            )
            + "</p>",
            "<p class='muted'>Streaming detectors on the "
            f"{escape(perf['detectors']['stream'])} stream: "
            + ", ".join(
                f"{escape(k)} {v['count']} change(s)"
                for k, v in perf["detectors"]["detections"].items()
            )
            + ".</p>",
        ]
    if estimate:
        rows = "".join(
            f"<tr><td>{escape(w['window'])}</td><td>{w['rows']}</td>"
            + "".join(f"<td>{_fmt(w.get(m))}</td>" for m in estimate["metrics"])
            + "</tr>"
            for w in [*estimate["windows"], estimate["overall"]]
            if w
        )
        heads = "".join(f"<th>estimated {escape(m)}</th>" for m in estimate["metrics"])
        parts += [
            "<h2>Estimated performance (no labels: an estimate)</h2>",
            f"<p class='muted'>{escape(estimate['method'])}; {escape(estimate['note'])}. "
            f"Holdout: {escape(str(estimate['holdout']))}.</p>",
            f"<table><tr><th>window</th><th>rows</th>{heads}</tr>{rows}</table>",
        ]
    parts.append(
        "<h2>Distributions: reference vs current</h2><p class='key'>"
        f"<span style='background:{REF}'></span>reference"
        f"<span style='background:{CUR}'></span>current (shares per bin; outer bins hold "
        "the tails)</p><div class='grid'>"
    )
    for c in columns:
        if c.get("plot"):
            mark = " <span class='drift'>DRIFT</span>" if c["drift"] else ""
            parts.append(
                f"<div class='card'><b>{escape(c['column'])}</b>{mark}<br>"
                f"{distribution_svg(c['plot'])}</div>"
            )
    parts.append("</div></body></html>")
    return "".join(parts)
