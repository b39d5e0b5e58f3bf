"""Plots for run pages, drawn server-side by matplotlib as inline SVG (no JavaScript charting)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt
from django.utils.safestring import SafeString, mark_safe

# Labels are user data (model names, metric names): "$...$" must print as typed, not as TeX math
# (an unbalanced "$\\frac{" used to raise and turn the campaign page and the dashboard into 500s).
matplotlib.rcParams["text.parse_math"] = False
matplotlib.rcParams["text.usetex"] = False

MAX_PANELS = 12


def svg(fig) -> SafeString:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    return mark_safe(svg[svg.index("<svg") :])


def metric_panels(series: dict[str, list[tuple[int, float]]]) -> SafeString | None:
    """One small line chart per metric (up to 12), in a grid; None when there is nothing to plot."""
    names = sorted(series)[:MAX_PANELS]
    if not names:
        return None
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.4, color="#2952cc")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return svg(fig)


def histograms(groups: dict[str, list[float]], title: str) -> SafeString | None:
    """Overlaid histograms (e.g. reward scores of chosen against rejected responses)."""
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, values in groups.items():
        ax.hist(values, bins=30, alpha=0.55, label=f"{label} (n={len(values)})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return svg(fig)


def bar_panels(labels: list[str], figures: dict[str, list[float | None]]) -> SafeString | None:
    """One small bar chart per figure (up to 12), a bar per label (missing values left out); the first bar grey."""
    names = [n for n in figures if any(v is not None for v in figures[n])][:MAX_PANELS]
    if not names or not labels:
        return None
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    colours = ["#8a8f98"] + ["#2952cc"] * (len(labels) - 1)
    for ax, name in zip(axes.flat, names):
        shown = [(label, value, colour) for label, value, colour in zip(labels, figures[name], colours) if value is not None]
        ax.bar(range(len(shown)), [v for _, v, _ in shown], color=[c for _, _, c in shown])
        ax.set_xticks(range(len(shown)), [label for label, _, _ in shown], rotation=20, ha="right", fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return svg(fig)
