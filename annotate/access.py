"""The one door: fetch an object for a user or raise 404 (not yours to see) / 403 (seen, not allowed).

A user who is not a member of a campaign gets 404 for everything in it, so the
existence of other campaigns does not leak.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from annotate.core import redact, sql
from annotate.models import Assignment, Campaign, Membership, ModelVersion, Run, Task

Role = Membership.Role
LABELING_ROLES = (Role.LABELER, Role.ADMIN)
READING_ROLES = (Role.ADMIN, Role.RESEARCHER)
ANY_ROLE = (Role.ADMIN, Role.RESEARCHER, Role.LABELER)


def role_in(user, campaign: Campaign) -> str | None:
    """The user's role in the campaign; superusers act as admins everywhere."""
    if user.is_superuser:
        return Role.ADMIN
    membership = Membership.objects.filter(campaign=campaign, user=user).only("role").first()
    return membership.role if membership else None


def campaign_for(user, slug: str, roles=ANY_ROLE) -> Campaign:
    """The campaign if the user is a member with one of `roles`; 404 if not a member, 403 if the role falls short."""
    if not user.is_authenticated:
        raise Http404
    if user.is_superuser:
        campaign = Campaign.objects.filter(slug=slug).first()
        if campaign is None:
            raise Http404
        campaign.user_role = Role.ADMIN
        return campaign
    row = sql.membership_and_campaign(slug, user.pk)  # one hand-written query: this runs on every request
    if row is None:
        raise Http404
    role, paused = row[0], bool(row[1])
    if role not in roles:
        raise PermissionDenied(f"Your role in this campaign ({role}) does not allow this.")
    campaign = sql.instance(Campaign, row[2:])
    campaign.user_role = role
    campaign.user_paused = paused
    return campaign


def require_role(user, campaign: Campaign, roles=ANY_ROLE) -> str:
    """The user's role in `campaign`; 404 if not a member, 403 if the role falls short."""
    role = role_in(user, campaign) if user.is_authenticated else None
    if role is None:
        raise Http404
    if role not in roles:
        raise PermissionDenied(f"Your role in this campaign ({role}) does not allow this.")
    return role


def task_for_labeler(user, task_id: int) -> Task:
    """A task of a campaign the user labels for, with its campaign (one query); 404 otherwise."""
    if not user.is_authenticated or not 0 < task_id < 2**63:  # out of range is no task, not a database error
        raise Http404
    row = sql.role_task_and_campaign(user.pk, task_id)
    if row is None:
        raise Http404
    role = Role.ADMIN if user.is_superuser else row[0]
    if role is None:
        raise Http404
    if role not in LABELING_ROLES:
        raise PermissionDenied(f"Your role in this campaign ({role}) does not allow this.")
    split = 1 + sql.width(Task)
    task = sql.instance(Task, row[1:split])
    task.campaign = sql.instance(Campaign, row[split:])
    task.user_role = role
    return task


def is_staff(user) -> bool:
    """Staff see every campaign's models and runs, and server detail (paths, tracebacks)."""
    return user.is_authenticated and (user.is_superuser or user.is_staff)


def can_create_campaigns(user) -> bool:
    return is_staff(user)


def may_preview_instructions(user) -> bool:
    """Staff (who create campaigns) and the admins of some campaign (who edit one)."""
    return can_create_campaigns(user) or Membership.objects.filter(user=user, role=Role.ADMIN).exists()


def visible_campaigns(user) -> QuerySet[Campaign]:
    """The campaigns a user lists: their own; a superuser's are all of them."""
    if user.is_superuser:
        return Campaign.objects.all()
    return Campaign.objects.filter(memberships__user=user)


def holds_lease(user, task: Task) -> bool:
    """Whether the task was leased to the user and not yet answered or given back (open, or lapsed: a judgement
    is still accepted then). Only they may see the task's form again."""
    return Assignment.objects.filter(task=task, labeler=user, state__in=(Assignment.State.OPEN, Assignment.State.EXPIRED)).exists()


def assignment_of(user, task: Task) -> Assignment | None:
    return Assignment.objects.filter(task=task, labeler=user).first()


def run_for(user, run_id: int, roles=READING_ROLES) -> Run:
    """A run of a campaign where the user has one of `roles`; a run of no campaign is for staff (404 otherwise)."""
    run = Run.objects.select_related("campaign", "created_by").filter(pk=run_id).first()
    if run is None:
        raise Http404
    if run.campaign is None:
        if not user.is_staff:
            raise Http404
    else:
        require_role(user, run.campaign, roles)
    return run


def may_manage_run(user, run: Run) -> bool:
    """Cancelling a run: admins of its campaign (staff, for a run of no campaign)."""
    if run.campaign is None:
        return is_staff(user)
    return role_in(user, run.campaign) == Role.ADMIN


def model_for(user, model_id: int) -> ModelVersion:
    """A model version the user may use: staff, or admins and researchers of the campaign it was trained on (404 otherwise)."""
    version = ModelVersion.objects.filter(pk=model_id).first()
    if version is None or not may_use_model(user, version):
        raise Http404
    return version


def may_use_model(user, version: ModelVersion) -> bool:
    if is_staff(user):
        return True
    slug = model_campaign(version)
    return bool(slug) and Membership.objects.filter(campaign__slug=slug, user=user, role__in=READING_ROLES).exists()


def model_campaign(version: ModelVersion) -> str | None:
    """The slug of the campaign a model version was made in (trained there, or optimised there); None: no campaign's."""
    metadata = version.metadata if isinstance(version.metadata, dict) else {}
    return metadata.get("campaign") or metadata.get("optimized_in") or None


def model_usable_in(version: ModelVersion, campaign: Campaign) -> bool:
    """A run of `campaign` may use a model made in that campaign, or one of no campaign (the default base,
    staff-registered models); never another campaign's reward model or policy."""
    slug = model_campaign(version)
    return slug is None or slug == campaign.slug


def models_usable_in(campaign: Campaign, versions: QuerySet[ModelVersion]) -> QuerySet[ModelVersion]:
    """`versions` that a run of `campaign` may use (model_usable_in, as a query)."""
    no_campaign = ~Q(metadata__has_key="campaign") & ~Q(metadata__has_key="optimized_in")
    return versions.filter(Q(metadata__campaign=campaign.slug) | Q(metadata__optimized_in=campaign.slug) | no_campaign)


def visible_models(user, versions: QuerySet[ModelVersion]) -> QuerySet[ModelVersion]:
    """The registry as a user may list it: staff everything; others the models of campaigns where they are
    admin or researcher, and the checkpoints of no campaign (the default base, models staff registered).
    Names that only label imported responses (no checkpoint) came with some campaign's data: staff only."""
    if is_staff(user):
        return versions
    slugs = list(Membership.objects.filter(user=user, role__in=READING_ROLES).values_list("campaign__slug", flat=True))
    no_campaign = ~Q(metadata__has_key="campaign") & ~Q(metadata__has_key="optimized_in") & ~Q(checkpoint_path="")
    return versions.filter(Q(metadata__campaign__in=slugs) | Q(metadata__optimized_in__in=slugs) | no_campaign)


def visible_model_for(user, model_id: int) -> ModelVersion:
    """A model version the user may see in the registry (access.visible_models), with its parent; 404 otherwise."""
    version = visible_models(user, ModelVersion.objects.select_related("parent")).filter(pk=model_id).first()
    if version is None:
        raise Http404
    return version


def readable_runs(user, runs: QuerySet[Run]) -> QuerySet[Run]:
    """The runs of campaigns the user reads (admins, researchers); staff see all."""
    if is_staff(user):
        return runs
    return runs.filter(campaign_id__in=Membership.objects.filter(user=user, role__in=READING_ROLES).values("campaign_id"))


def sees_server_detail(user) -> bool:
    """Server paths and tracebacks (in run records, the registry) are for staff; others get the short story."""
    return is_staff(user)


def run_as_seen_by(user, run: Run) -> Run:
    """The run with server detail (tracebacks, absolute paths) hidden unless the user is staff; for showing, never saving."""
    if not sees_server_detail(user):
        run.error = redact.short_error(run.error)
        run.log_tail = redact.hide_paths(run.log_tail)
        run.artifacts = redact.hide_paths(run.artifacts)
        run.result = redact.hide_paths(run.result)
    return run


def may_receive_live_events(user, slug: str) -> int | None:
    """The campaign's id if the user may follow its live judgement events (admins and researchers), else None."""
    try:
        return campaign_for(user, slug, READING_ROLES).pk
    except (Http404, PermissionDenied):
        return None


def administers(campaign: Campaign) -> bool:
    """Whether the caller (`campaign` as returned by campaign_for) is its admin: the pages show admins their forms."""
    return campaign.user_role == Role.ADMIN


def labels_in(campaign: Campaign) -> bool:
    """Whether the caller (`campaign` as returned by campaign_for) may label in it (labelers and admins)."""
    return campaign.user_role in LABELING_ROLES


def require_real_names(campaign: Campaign) -> None:
    """Labelers' real usernames are for the campaign's admins only (`campaign` as returned by campaign_for)."""
    if campaign.user_role != Role.ADMIN:
        raise PermissionDenied("Only campaign admins may see labelers' real names.")
