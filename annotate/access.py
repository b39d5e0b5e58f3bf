"""The one door: fetch an object for a user or raise 404 (not yours to see) / 403 (seen, not allowed).

A user who is not a member of a campaign gets 404 for everything in it, so the
existence of other campaigns does not leak.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from annotate.core import sql
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


def can_create_campaigns(user) -> bool:
    return user.is_authenticated and (user.is_superuser or user.is_staff)


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


def model_for(user, model_id: int) -> ModelVersion:
    """A model version the user may use: staff, or admins and researchers of the campaign it was trained on (404 otherwise)."""
    version = ModelVersion.objects.filter(pk=model_id).first()
    if version is None or not may_use_model(user, version):
        raise Http404
    return version


def may_use_model(user, version: ModelVersion) -> bool:
    if user.is_staff or user.is_superuser:
        return True
    slug = version.metadata.get("campaign")
    return bool(slug) and Membership.objects.filter(campaign__slug=slug, user=user, role__in=READING_ROLES).exists()


def require_real_names(campaign: Campaign) -> None:
    """Labelers' real usernames are for the campaign's admins only (`campaign` as returned by campaign_for)."""
    if campaign.user_role != Role.ADMIN:
        raise PermissionDenied("Only campaign admins may see labelers' real names.")
