"""Campaign admin pages: create and edit a campaign, import files, gold answers, labelers.

Every page of a campaign goes through access.campaign_for(..., ADMIN): 404 for non-members,
403 for researchers and labelers. Creating a campaign is for staff.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Prefetch, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST

from annotate import access
from annotate.campaigns import members, setup
from annotate.campaigns.imports import files
from annotate.core.errors import DomainError, ImportRejected, InvalidRanking
from annotate.core.markdown import render_markdown
from annotate.core.text_input import ascii_int
from annotate.labeling import gold
from annotate.models import Membership, Run, Task, TaskResponse
from annotate.stats.labeler_stats import agreement_by_labeler, labeler_stats
from annotate.web.admin_forms import AddLabelerForm, CampaignForm, ImportForm

ADMIN = (Membership.Role.ADMIN,)
TASKS_PER_PAGE = 50
MEMBERS_PER_PAGE = 25


# CAMPAIGN SETTINGS


@login_required
@require_http_methods(["GET", "POST"])
def create_campaign(request):
    if not access.can_create_campaigns(request.user):
        raise PermissionDenied("Only staff can create campaigns.")
    form = CampaignForm(request.POST or None, initial={"task_type": "pairwise"})
    if request.method == "POST" and form.is_valid():
        try:
            campaign = setup.create_campaign(request.user, status="draft", **form.settings())
            messages.success(request, f"Campaign {campaign.name} created as a draft. Next: import prompts and responses, then open it on the Settings page.")
            return redirect("campaign-import", slug=campaign.slug)
        except DomainError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
    return render(request, "annotate/admin_campaign_form.html", {"form": form, "creating": True}, status=422 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def campaign_settings(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    form = CampaignForm(request.POST or None, campaign=campaign)
    saved = False
    if request.method == "POST" and form.is_valid():
        try:
            role = campaign.user_role
            campaign = setup.update_campaign(campaign, **form.settings())
            campaign.user_role = role
            form, saved = CampaignForm(campaign=campaign), True
        except DomainError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
    context = {"form": form, "campaign": campaign, "saved": saved, "preview": render_markdown(campaign.instructions)}
    return render(request, "annotate/admin_campaign_form.html", context, status=422 if form.errors else 200)


@login_required
@require_POST
def campaign_status(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    try:
        setup.set_status(campaign, request.POST.get("action", ""))
    except DomainError as exc:
        return render(request, "annotate/admin_message.html", {"campaign": campaign, "error": exc.message}, status=400)
    return redirect("campaign-settings", slug=slug)


@login_required
@require_POST
def preview_markdown(request):
    """The instructions as labelers will see them (htmx, while the admin types)."""
    if not access.may_preview_instructions(request.user):
        raise PermissionDenied("Only campaign admins preview instructions.")
    return render(request, "annotate/admin_preview.html", {"html": render_markdown(request.POST.get("instructions", ""))})


# IMPORTS


@login_required
@require_http_methods(["GET", "POST"])
def import_file(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    form = ImportForm(request.POST or None, request.FILES or None)
    context, status = {"campaign": campaign, "form": form}, 200
    if request.method == "POST":
        if form.is_valid():
            try:
                options = files.import_options(form.cleaned_data)
                summary, run = files.import_upload(campaign, form.cleaned_data["file"], options, request.user)
                if run is not None:
                    return redirect("run", run_id=run.pk)
                context["summary"] = summary
                form = context["form"] = ImportForm(initial={"kind": options.kind})
            except ImportRejected as exc:
                context["rejected"], status = exc, exc.status if exc.status != 400 else 422
        else:
            status = 422
    context["sync_rows"] = files.limit("IMPORT_SYNC_ROWS")
    context["runs"] = Run.objects.filter(campaign=campaign, kind="import").select_related("created_by").order_by("-created_at")[:10]
    return render(request, "annotate/admin_import.html", context, status=status)


# TASKS AND GOLD ANSWERS


@login_required
def task_list(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    tasks = Task.objects.filter(campaign=campaign).select_related("prompt").order_by("-id")
    only_gold = request.GET.get("gold") == "1"
    query = request.GET.get("q", "").strip()
    if only_gold:
        tasks = tasks.filter(is_gold=True)
    if query:
        match = Q(prompt__external_id__icontains=query)
        tasks = tasks.filter(match | Q(pk=ascii_int(query)) if ascii_int(query) is not None else match)
    page = Paginator(tasks, TASKS_PER_PAGE).get_page(request.GET.get("page"))
    slots = TaskResponse.objects.select_related("response__model_version").order_by("position")
    tasks_on_page = Task.objects.filter(pk__in=[t.pk for t in page]).prefetch_related(Prefetch("slots", queryset=slots))
    models = {t.pk: [s.response.model_version.name for s in t.slots.all()] for t in tasks_on_page}
    rows = [{"task": t, "models": models.get(t.pk, []), "prompt": _first_user_turn(t.prompt.messages)} for t in page]
    keep = urlencode({k: v for k, v in (("q", query), ("gold", "1" if only_gold else "")) if v})
    context = {"campaign": campaign, "page": page, "rows": rows, "only_gold": only_gold, "query": query, "keep_params": keep + "&" if keep else ""}
    return render(request, "annotate/admin_tasks.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def gold_answer(request, slug, task_id):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    task = Task.objects.select_related("prompt").filter(pk=task_id, campaign=campaign).first()
    if task is None:
        raise Http404
    slots = list(TaskResponse.objects.filter(task=task).select_related("response__model_version").order_by("position"))
    error, status = "", 200
    if request.method == "POST":
        try:
            gold.mark_gold(task, _ranking_from_places(request.POST, slots))
            return redirect(reverse("campaign-tasks", kwargs={"slug": slug}) + "?gold=1")
        except DomainError as exc:
            error, status = exc.message, 422
    places = _places_of(task.gold_ranking or [])
    responses = [{"slot": s, "letter": chr(ord("A") + i), "place": request.POST.get(f"place-{s.response_id}") or places.get(s.response_id, "")} for i, s in enumerate(slots)]
    context = {"campaign": campaign, "task": task, "responses": responses, "error": error, "places": range(1, len(slots) + 1)}
    return render(request, "annotate/admin_gold.html", context, status=status)


def _ranking_from_places(post, slots) -> list[list[int]]:
    """Fields place-<response id> = 1, 2, ... (equal places tie) into groups of response ids, best first."""
    by_place: dict[int, list[int]] = {}
    for slot in slots:
        place = ascii_int(post.get(f"place-{slot.response_id}", ""))
        if place is None:
            raise InvalidRanking("give every response a place (1 is best; equal places are a tie).", field="gold_ranking")
        by_place.setdefault(place, []).append(slot.response_id)
    return [by_place[p] for p in sorted(by_place)]


def _places_of(ranking: list[list[int]]) -> dict[int, int]:
    return {rid: place for place, group in enumerate(ranking, 1) for rid in group}


def _first_user_turn(messages) -> str:
    for turn in messages or []:
        if turn.get("role") == "user":
            return turn.get("content", "")
    return ""


# LABELERS


@login_required
@require_http_methods(["GET", "POST"])
def labeler_list(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    form = AddLabelerForm(request.POST or None)
    added, status = None, 200
    if request.method == "POST":
        if form.is_valid():
            try:
                data = form.cleaned_data
                added = members.add_member(campaign, request.user, data["username"], data["role"], email=data["email"])
                form = AddLabelerForm()
            except DomainError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        status = 422 if form.errors else 200
    context = {"campaign": campaign, "form": form, "added": added, **_members_context(campaign, request.GET)}
    return render(request, "annotate/admin_labelers.html", context, status=status)


@login_required
@require_POST
def labeler_action(request, slug, user_id):
    """pause, resume, role, deactivate or activate one member; back to the list (same page)."""
    campaign = access.campaign_for(request.user, slug, ADMIN)
    user = get_user_model().objects.filter(pk=user_id, memberships__campaign=campaign).first()
    if user is None:
        raise Http404
    action = request.POST.get("action", "")
    try:
        if action in ("pause", "resume"):
            members.set_paused(campaign, user, action == "pause", request.POST.get("reason", ""))
        elif action == "role":
            members.change_role(campaign, request.user, user, request.POST.get("role", ""))
        elif action in ("deactivate", "activate"):
            members.set_active(request.user, user, action == "activate")
        else:
            raise members.MemberError("unknown action.")
    except DomainError as exc:
        return render(request, "annotate/admin_message.html", {"campaign": campaign, "error": exc.message}, status=exc.status)
    back = reverse("campaign-labelers", kwargs={"slug": slug})
    page = request.POST.get("page", "")
    return redirect(f"{back}?page={page}" if page.isdigit() else back)


def _members_context(campaign, params) -> dict:
    memberships = Membership.objects.filter(campaign=campaign).select_related("user").order_by("user__username")
    role = params.get("role", "")
    if role in Membership.Role.values:
        memberships = memberships.filter(role=role)
    page = Paginator(memberships, MEMBERS_PER_PAGE).get_page(params.get("page"))
    agreement = agreement_by_labeler(campaign)
    stats = labeler_stats(campaign, [m.user_id for m in page], agreement)
    rows = [{"membership": m, "user": m.user, "stats": stats[m.user_id]} for m in page]
    keep = f"role={role}&" if role in Membership.Role.values else ""
    return {"page": page, "rows": rows, "role_filter": role, "roles": Membership.Role.choices, "show_agreement": agreement is not None, "keep_params": keep}
