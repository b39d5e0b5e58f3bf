"""A run's live state for its page: a small JSON document the page polls (status, progress, message, log, error)."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from annotate import access
from annotate.jobs import engine


@login_required
@require_GET
def run_state(request, run_id):
    """What changes while a run works, a few hundred bytes instead of the whole page."""
    engine.fail_stale_runs()
    run = access.run_for(request.user, run_id)
    return JsonResponse({
        "status": run.status,
        "finished": run.is_finished,
        "progress": 1.0 if run.status == "succeeded" else run.progress,
        "message": render_to_string("annotate/_run_message.html", {"run": run}).strip(),
        "times": render_to_string("annotate/_run_times.html", {"run": run, "phase_times": engine.phase_times(run)}).strip(),
        "worker": run.worker,
        "log": run.log_tail,
        "error": run.error,
    })
