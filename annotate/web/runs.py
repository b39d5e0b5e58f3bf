"""A run's live state for its page: a small JSON document the page polls (status, progress, message, log, error),
and its metric plots alone, which the page re-fetches while the run records new points."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from annotate import access
from annotate.core.plots import metric_panels
from annotate.jobs import engine


@login_required
@require_GET
def run_state(request, run_id):
    """What changes while a run works, a few hundred bytes instead of the whole page."""
    engine.fail_stale_runs()
    run = access.run_as_seen_by(request.user, access.run_for(request.user, run_id))  # tracebacks and paths for staff only, as on the page
    return JsonResponse({
        "status": run.status,
        "finished": run.is_finished,
        "progress": 1.0 if run.status == "succeeded" else run.progress,
        "message": render_to_string("annotate/_run_message.html", {"run": run}).strip(),
        "times": render_to_string("annotate/_run_times.html", {"run": run, "phase_times": engine.phase_times(run)}).strip(),
        "worker": run.worker,
        "log": run.log_tail,
        "error": run.error,
        "metric_points": run.metrics.count(),  # the page re-fetches its plots when this grows
    })


@login_required
@require_GET
def run_metrics(request, run_id):
    """The run page's metrics section alone (plots drawn server-side), for refreshing it while the run works."""
    run = access.run_for(request.user, run_id)
    return render(request, "annotate/_run_metrics.html", {"plots": metric_panels(engine.metric_series(run))})
