"""The export page for a campaign's researchers and admins: choose shape, format and filters, see how many
rows that makes, download (the API's streamed export endpoint, same query parameters), and freeze snapshots."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from annotate import access
from annotate.core.errors import DomainError
from annotate.exports import snapshot_job, snapshots
from annotate.exports.export import preview
from annotate.exports.options import FILTER_NAMES, FLAGGED, FORMATS, OPTION_NAMES, SHAPES, parse_export
from annotate.jobs import engine
from annotate.models import Membership, Response

EXPORT_PARAMS = set(OPTION_NAMES) | set(FILTER_NAMES)


@login_required
@require_GET
def export_page(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    context = {
        "campaign": campaign,
        "shapes": SHAPES,
        "formats": FORMATS,
        "flagged": FLAGGED,
        "may_see_names": campaign.user_role == Membership.Role.ADMIN,
        "model_names": sorted(set(Response.objects.filter(prompt__campaign=campaign).values_list("model_version__name", flat=True))),
        "snapshots": campaign.snapshots.select_related("created_by").order_by("-version"),
    }
    return render(request, "annotate/export.html", context)


@login_required
@require_GET
def export_preview(request, slug):
    """How many rows the chosen export holds (htmx partial); a bad parameter is a 422 naming it."""
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    try:
        options, filters = parse_export(_export_params(request.GET))
        counts = preview(campaign, options, filters)
    except DomainError as exc:
        return render(request, "annotate/_export_preview.html", {"error": exc}, status=422)
    return render(request, "annotate/_export_preview.html", {"counts": counts, "options": options})


@login_required
@require_POST
def create_snapshot(request, slug):
    """Freeze the chosen export under a name (pseudonymous); a large campaign's snapshot is written by a run."""
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    params = _export_params(request.POST)
    params.pop("identities", None)  # snapshots are always pseudonymous
    shape, format_ = params.pop("shape", "pairs"), params.pop("format", "jsonl")
    data = {"name": request.POST.get("name", "").strip(), "shape": shape, "format": format_, "filters": params}
    try:
        if snapshot_job.in_background(campaign):
            run = engine.start_run("snapshot", campaign=campaign, params=data, user=request.user)
            return _go(request, reverse("run", args=[run.pk]))
        options, filters = snapshot_job.parse(data)
        snapshot = snapshots.create_snapshot(campaign, data["name"], options, filters, user=request.user)
    except DomainError as exc:
        messages.error(request, f"Snapshot not created: {exc.message}")
        return _go(request, reverse("campaign-export", args=[slug]))
    messages.success(request, f"Snapshot {snapshot.name} (v{snapshot.version}) created: {snapshot.row_counts.get('rows', 0)} rows.")
    return _go(request, reverse("campaign-export", args=[slug]))


def _go(request, url: str):
    """The page to show next: the snapshot form posts through htmx (to send the export form's fields too)."""
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _export_params(query) -> dict[str, str]:
    """The export's parameters from a form: empty fields left out, so each takes its default."""
    return {key: value for key in EXPORT_PARAMS if (value := query.get(key, "").strip())}
