"""The dashboard's plots, drawn server-side by matplotlib as inline SVG (no JavaScript charting, no CDN)."""
from __future__ import annotations

from datetime import datetime, timedelta
from itertools import accumulate

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from django.utils.safestring import SafeString

from annotate.core.plots import svg

ACCENT = "#2952cc"
BUCKET_LABEL = {"minute": "per minute", "hour": "per hour", "day": "per day"}


def activity_plot(activity: dict) -> SafeString | None:
    """Two panels: judgements stored so far (cumulative) and throughput per time bucket; None when empty."""
    series = activity["series"]
    if not series:
        return None
    times = [datetime.fromisoformat(point["t"]) for point in series]
    counts = [point["n"] for point in series]
    cumulative = list(accumulate(counts))
    step = timedelta(days=_bar_width(activity["bucket"]) / 0.8)
    fig, (total_ax, rate_ax) = plt.subplots(1, 2, figsize=(9, 2.6))
    # each level lasts its whole bucket, the last one included
    total_ax.step(times + [times[-1] + step], cumulative + cumulative[-1:], where="post", color=ACCENT, linewidth=1.5)
    total_ax.set_title("Judgements over time", fontsize=10)
    rate_ax.bar(times, counts, width=_bar_width(activity["bucket"]), align="edge", color=ACCENT, alpha=0.8)
    rate_ax.set_title(f"Throughput ({BUCKET_LABEL[activity['bucket']]})", fontsize=10)
    for ax in (total_ax, rate_ax):
        ax.set_xlim(times[0] - step, times[-1] + 2 * step)  # one bucket of margin: a lone bucket is not stretched over years
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    return svg(fig)


def strength_plot(models: list[dict]) -> SafeString | None:
    """Bradley–Terry strength of each model version with its bootstrap interval, strongest on top.

    An open end (a model that won or lost every comparison) is drawn as an arrow to the edge.
    """
    if not models:
        return None
    rows = list(reversed(models))  # matplotlib draws the first row at the bottom
    finite = [v for m in rows for v in (m["strength"], m["ci_low"], m["ci_high"]) if v is not None]
    left, right = min(finite) - 0.5, max(finite) + 0.5
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.0))
    for y, m in enumerate(rows):
        low = left if m["ci_low"] is None else m["ci_low"]
        high = right if m["ci_high"] is None else m["ci_high"]
        ax.plot([low, high], [y, y], color="#5b6577", linewidth=1.5)
        for end, is_open, arrow in ((low, m["ci_low"] is None, "<"), (high, m["ci_high"] is None, ">")):
            ax.plot([end], [y], marker=arrow if is_open else "|", markersize=8, color="#5b6577")
        ax.plot([m["strength"]], [y], "o", color=ACCENT)
    ax.axvline(0, color="#d8dde6", linewidth=1)
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(range(len(rows)), [m["name"] for m in rows], fontsize=9)
    ax.set_xlabel("Bradley–Terry strength (log-odds against the average model), 95% interval", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return svg(fig)


def _bar_width(bucket: str) -> float:
    """Bar width in days (matplotlib's date unit), a little under the bucket."""
    return {"minute": 1 / 1440, "hour": 1 / 24, "day": 1.0}[bucket] * 0.8
