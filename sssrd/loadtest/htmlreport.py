"""The `--html` report: one self-contained page of pictures and tables from the JSON report.

Charts are plotly figures (interactive: zoom, hover for exact values) with plotly.js inlined
once, so the file opens offline and fetches nothing. Histograms come from the report's log-scale
HDR buckets; the latency-over-time plot draws the per-second percentiles with every sampled
error marked by kind; tables are plain HTML built here, every value escaped.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from sssrd.loadtest.terminal import COLUMNS, PHASE_LABELS, users

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem;
  padding: 0 1rem; color: #212529; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
p.lead { color: #495057; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #dee2e6; text-align: right; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
td.bad { color: #c92a2a; font-weight: 600; }
.chart { min-height: 380px; }
"""
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
ERROR_COLOURS = {
    "connect": "#862e9c",
    "tls": "#5f3dc4",
    "timeout": "#e67700",
    "reset": "#c92a2a",
    "closed": "#495057",
    "truncated": "#d9480f",
    "protocol": "#364fc7",
    "http_4xx": "#0b7285",
    "http_5xx": "#a61e4d",
}


def cell(value: object, bad: bool = False) -> str:
    text = (
        f"{value:,.2f}"
        if isinstance(value, float)
        else (f"{value:,}" if isinstance(value, int) else str(value))
    )
    return f'<td class="bad">{html.escape(text)}</td>' if bad else f"<td>{html.escape(text)}</td>"


def table(headings: list[str], rows: list[str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    return f'<table id="{table_id}"><tr>{head}</tr>{"".join(rows)}</table>'


def histogram_figure(rows: list[list[float]], title: str, colour: str) -> go.Figure:
    figure = go.Figure(
        go.Scatter(
            x=[upper for upper, _ in rows],
            y=[count for _, count in rows],
            mode="lines",
            line={"shape": "vh", "color": colour},
            fill="tozeroy",
            hovertemplate="≤ %{x:.3f} ms: %{y:,} <extra></extra>",
        )
    )
    figure.update_layout(title=title, xaxis_title="ms (log scale)", yaxis_title="count")
    figure.update_xaxes(type="log")
    if not rows:
        figure.add_annotation(text="none recorded", showarrow=False, font={"size": 16})
    return figure


def timeline_figure(report: dict[str, Any]) -> go.Figure:
    timeline = report["timeline"]
    seconds = [point["t"] for point in timeline]
    figure = go.Figure()
    for key, name, colour in (
        ("ttfb_p50_ms", "TTFB p50", "#1c7ed6"),
        ("ttfb_p99_ms", "TTFB p99", "#74c0fc"),
        ("total_p99_ms", "total p99", "#37b24d"),
    ):
        figure.add_trace(
            go.Scatter(x=seconds, y=[p[key] for p in timeline], name=name, line={"color": colour})
        )
    samples = report["error_samples"]
    for kind in sorted({sample["kind"] for sample in samples}):
        marked = [sample for sample in samples if sample["kind"] == kind]
        figure.add_trace(
            go.Scatter(
                x=[sample["t"] for sample in marked],
                y=[max(sample["elapsed_ms"], 0.001) for sample in marked],
                mode="markers",
                name=f"error: {kind}",
                marker={"symbol": "x", "size": 8, "color": ERROR_COLOURS.get(kind, "#000")},
                text=[sample["cf_id"] or sample["detail"] for sample in marked],
                hovertemplate="%{x:.2f} s: %{y:.1f} ms<br>%{text}<extra>" + kind + "</extra>",
            )
        )
    figure.update_layout(
        title="latency over time (per second; errors marked at their time and elapsed ms)",
        xaxis_title="seconds since start",
        yaxis_title="ms (log scale)",
    )
    figure.update_yaxes(type="log")
    return figure


def phase_rows(latency: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, label in PHASE_LABELS.items():
        values = latency[name]
        if values["count"]:
            cells = "".join(cell(float(values[c])) for c in COLUMNS)
            rows.append(f"<tr>{cell(label)}{cell(values['count'])}{cells}</tr>")
    return rows


def pop_rows(pops: list[dict[str, Any]]) -> list[str]:
    rows = []
    for pop in pops:
        errors = sum(pop["errors"].values())
        cache = ", ".join(f"{name}: {count:,}" for name, count in pop["cache"].items())
        rows.append(
            "<tr>"
            + cell(pop["pop"])
            + cell(pop["requests"])
            + cell(pop["ok"])
            + cell(errors, bad=errors > 0)
            + cell(cache or "-")
            + cell(float(pop["ttfb_ms"]["p50"]))
            + cell(float(pop["ttfb_ms"]["p99"]))
            + cell(float(pop["total_ms"]["p99"]))
            + cell(" ".join(pop["failed_cf_ids"][:5]) or "-")
            + "</tr>"
        )
    return rows


def chart(figure: go.Figure, chart_id: str, first: bool) -> str:
    html: str = pio.to_html(  # plotly ships no type information
        figure,
        full_html=False,
        include_plotlyjs=first,  # inlined once, never fetched
        div_id=chart_id,
        config=PLOT_CONFIG,
        default_height=380,
    )
    return html


def render(report: dict[str, Any]) -> str:
    """The whole page as a string."""
    histograms = report["histograms_ms"]
    mode, requests, rate = report["mode"], report["requests"], report["rate"]
    asked = f"{mode['rate']:g}/s asked" if mode["rate"] else users(mode["concurrency"])
    errors = [
        f"<tr>{cell(kind)}{cell(count, bad=True)}</tr>"
        for kind, count in report["errors"].items()
        if count
    ]
    charts = [
        chart(
            histogram_figure(histograms["ttfb"], "time to first byte", "#1c7ed6"),
            "ttfb-histogram",
            True,
        ),
        chart(
            histogram_figure(histograms["chunk_gap"], "gap between body chunks", "#f08c00"),
            "chunk-gap-histogram",
            False,
        ),
        chart(timeline_figure(report), "latency-over-time", False),
    ]
    pop_headings = [
        "POP",
        "requests",
        "ok",
        "errors",
        "cache",
        "TTFB p50",
        "TTFB p99",
        "total p99",
        "failed x-amz-cf-id",
    ]
    title = html.escape(f"sssrd loadtest: {report['target']['urls'][0]}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p class="lead">{html.escape(report["started"])} · {mode["loop"]} loop, {html.escape(asked)},
{rate["sent_per_s"]:,.1f}/s sent · {requests["sent"]:,} sent, {requests["ok"]:,} ok,
{requests["failed"]:,} failed in {report["elapsed_s"]:.1f} s · {report["connections"]:,}
connections · {html.escape(report["tool"])}</p>
<h2>Latency, ms (from each request's due time)</h2>
{
        table(
            ["phase", "count", *(c.replace("_", ".") for c in COLUMNS)],
            phase_rows(report["latency_ms"]),
            "phases",
        )
    }
<h2>Errors</h2>
{table(["kind", "count"], errors, "errors") if errors else "<p>none</p>"}
<div class="chart">{charts[0]}</div>
<div class="chart">{charts[1]}</div>
<div class="chart">{charts[2]}</div>
<h2>Per CloudFront POP</h2>
{table(pop_headings, pop_rows(report["pops"]), "pops")}
</body></html>
"""
