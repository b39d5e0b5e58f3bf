"""The snapshot job (kind `snapshot`): a large export frozen in the background, not in the request.

POST /api/v1/campaigns/{slug}/snapshots/ freezes the snapshot in the request while the campaign
holds at most IN_REQUEST_LIMIT judgements (a few seconds); beyond that it answers 202 with this
run, whose result names the snapshot once it is written. Bad params and a taken name are
refused at once either way.
"""
from __future__ import annotations

from annotate.exports import snapshots
from annotate.exports.options import ExportFilters, ExportOptions, InvalidExport, parse_export
from annotate.jobs.engine import InvalidParams, RunContext, register
from annotate.models import Campaign, Judgement

IN_REQUEST_LIMIT = 50_000


def in_background(campaign: Campaign) -> bool:
    return Judgement.objects.filter(task__campaign=campaign).count() > IN_REQUEST_LIMIT


def parse(params: dict) -> tuple[ExportOptions, ExportFilters]:
    """The export a snapshot request asks for: {name, shape, format, filters} (filters may carry text, test_fraction, seed)."""
    filters = params.get("filters", {})
    if not isinstance(filters, dict):
        raise InvalidParams("filters must be an object.", field="filters")
    if "identities" in filters:
        raise InvalidExport("snapshots are always pseudonymous.", field="identities", allowed=["pseudonymous"])
    return parse_export({**filters, "shape": params.get("shape", "pairs"), "format": params.get("format", "jsonl")})


def validate_params(campaign: Campaign | None, params: dict) -> dict:
    if campaign is None:
        raise InvalidParams("a snapshot belongs to a campaign.", field="campaign")
    snapshots.check_new_name(campaign, params.get("name"))
    options, filters = parse(params)
    return {"name": params["name"], "shape": options.shape, "format": options.format, "filters": filters.as_dict() | options.extras()}


def run_snapshot(ctx: RunContext) -> dict:
    options, filters = parse(ctx.params)
    ctx.progress(0.0, "exporting")
    snapshot = snapshots.create_snapshot(ctx.campaign, ctx.params["name"], options, filters, user=ctx.run.created_by)
    ctx.log(f"snapshot {snapshot.name} v{snapshot.version}: {snapshot.row_counts} ({snapshot.content_hash[:12]})")
    return {"snapshot": snapshot.name, "version": snapshot.version, "content_hash": snapshot.content_hash, "row_counts": snapshot.row_counts}


register("snapshot", validate_params, run_snapshot, ml=False)
