"""Pages for people: thin views that fetch through `access`, call one service, render."""
from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from annotate import access
from annotate.core.errors import DomainError, NotLeased
from annotate.core.markdown import render_markdown
from annotate.core.text_input import ascii_int
from annotate.labeling import assignment, judgements, validation
from annotate.labeling.task_content import task_content
from annotate.models import Campaign, Membership


@login_required
@require_GET
def home(request):
    """The campaigns this user belongs to, with their counts."""
    campaigns = access.visible_campaigns(request.user).order_by("-created_at").annotate(
        task_count=Count("tasks", distinct=True),
        open_count=Count("tasks", filter=Q(tasks__remaining__gt=0), distinct=True),
    )
    roles = dict(Membership.objects.filter(user=request.user).values_list("campaign_id", "role"))
    rows = [{"campaign": c, "role": roles.get(c.pk, "admin")} for c in campaigns[:200]]
    return render(request, "annotate/home.html", {"rows": rows})


@login_required
@require_GET
def label(request, slug):
    """The labeling page: guidelines, then the current task (leased on the way in)."""
    campaign = access.campaign_for(request.user, slug, access.LABELING_ROLES)
    context: dict[str, Any] = {"campaign": campaign, "instructions_html": render_markdown(campaign.instructions)}
    context.update(_next_task_context(request, campaign))
    return render(request, "annotate/label.html", context, status=context.get("status", 200))


@login_required
@require_POST
def submit(request, task_id):
    task = access.task_for_labeler(request.user, task_id)
    try:
        ranking = json.loads(request.POST.get("ranking") or "null")
        time_spent = request.POST.get("time_spent_ms") or None
        judgements.submit(
            request.user,
            task,
            ranking,
            rationale=request.POST.get("rationale", ""),
            flags=request.POST.getlist("flags"),
            ratings=_ratings_from_form(request.POST),
            time_spent_ms=ascii_int(time_spent),
            key=request.POST.get("key") or None,
        )
    except (DomainError, ValueError) as exc:
        message = exc.message if isinstance(exc, DomainError) else "The ranking could not be read; please rank again."
        if not access.holds_lease(request.user, task):  # only the lease holder sees the task again
            refused = exc.status if isinstance(exc, DomainError) and exc.status in (403, 409) else None  # not leased, already submitted
            return _notice(request, task.campaign, message if refused else NotLeased.default_message, refused or 403)
        context = _task_context(request, task.campaign, task, error=message)
        return render(request, "annotate/_task.html", context, status=422)
    _count_in_session(request, task.campaign)
    # stored: a 200 even if the next task is refused (the gold check may have paused the labeler just now)
    return render(request, "annotate/_task.html", _next_task_context(request, task.campaign))


@login_required
@require_POST
def skip(request, task_id):
    task = access.task_for_labeler(request.user, task_id)
    try:
        assignment.skip(request.user, task)
    except DomainError as exc:
        return _notice(request, task.campaign, exc.message, exc.status)
    return render(request, "annotate/_task.html", _next_task_context(request, task.campaign))


def _ratings_from_form(post) -> dict:
    """Fields named rating-<response id>-<criterion> into {"<response id>": {"<criterion>": int}}."""
    ratings: dict[str, dict[str, int]] = {}
    for name, value in post.items():
        if name.startswith("rating-") and value:
            _, rid, criterion = name.split("-", 2)
            digits = ascii_int(value.removeprefix("-"))  # not isdigit(): int() refuses "²"
            ratings.setdefault(rid, {})[criterion] = value if digits is None else -digits if value.startswith("-") else digits
    return ratings


def _next_task_context(request, campaign: Campaign) -> dict:
    if campaign.status != Campaign.Status.ACTIVE:
        return {"campaign": campaign, "closed": True, **_progress(request, campaign)}
    try:
        lease = assignment.next_task_for(request.user, campaign)
    except DomainError as exc:  # paused (by hand, or by the gold check just now): say so, serve nothing
        return {"campaign": campaign, "notice": exc.message, "status": exc.status, **_progress(request, campaign)}
    if lease is None:
        return {"campaign": campaign, "content": None, **_progress(request, campaign)}
    return _task_context(request, campaign, lease.task, lease_expires_at=lease.assignment.leased_until)


def _task_context(request, campaign: Campaign, task, *, error: str = "", lease_expires_at=None) -> dict:
    content = task_content(task)
    return {
        "campaign": campaign,
        "content": content,
        "criteria": [{**c, "scale": range(c["min"], c["max"] + 1)} for c in campaign.criteria],
        "pairwise": campaign.task_type == Campaign.TaskType.PAIRWISE,
        "key": uuid.uuid4().hex,
        "error": error,
        "lease_expires_at": lease_expires_at,
        "flag_choices": _flag_choices(campaign),
        **_progress(request, campaign),
    }


def _notice(request, campaign: Campaign, message: str, status: int):
    """The task area with a message and no task: what a refused submit or skip gets back."""
    return render(request, "annotate/_task.html", {"campaign": campaign, "notice": message, **_progress(request, campaign)}, status=status)


def _flag_choices(campaign: Campaign) -> list[tuple[str, str]]:
    flags = sorted(validation.ALLOWED_FLAGS)
    if campaign.task_type == Campaign.TaskType.PAIRWISE:
        flags.remove("all_bad")  # pairwise has its own "both bad" button
    return [(flag, flag.replace("_", " ")) for flag in flags]


def _progress(request, campaign: Campaign) -> dict:
    counts = assignment.progress(campaign)
    # judgements still wanted moves with every submit; open tasks did not while overlap > 1
    wanted = max(counts["judgements_needed"] - counts["judgements_received"], 0)
    return {"done_this_session": request.session.get(_session_key(campaign), 0), "open_tasks": counts["open_tasks"], "judgements_wanted": wanted}


def _count_in_session(request, campaign: Campaign) -> None:
    key = _session_key(campaign)
    request.session[key] = request.session.get(key, 0) + 1


def _session_key(campaign: Campaign) -> str:
    return f"done-{campaign.pk}"
