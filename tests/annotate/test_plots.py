"""Plots of user-named things: a name in matplotlib's math syntax prints as typed."""
from __future__ import annotations

from annotate.core.plots import bar_panels, histograms, metric_panels
from annotate.stats.dashboard_plots import strength_plot

NAMES = ["$\\frac{$", "price $5 and $6", "a_b^c $x$"]


def test_model_names_in_math_syntax_do_not_break_the_dashboard_plots():
    models = [{"name": name, "strength": 0.1 * i, "ci_low": None, "ci_high": 1.0} for i, name in enumerate(NAMES)]
    assert "<svg" in strength_plot(models)


def test_labels_in_math_syntax_do_not_break_the_run_plots():
    assert "<svg" in bar_panels(NAMES, {"$reward$": [1.0, 2.0, 3.0]})
    assert "<svg" in metric_panels({"loss/$\\x": [(1, 0.5), (2, 0.4)]})
    assert "<svg" in histograms({NAMES[0]: [0.1, 0.2]}, title="$\\oops")
