"""The one door: fetch an object for a user or raise 404 (not yours to see) / 403 (seen, not allowed).

A user who is not a member of a campaign gets 404 for everything in it, so the
existence of other campaigns does not leak.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.http import Http404

from .models import Assignment, Campaign, Membership, Task

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
    membership = Membership.objects.select_related("campaign").filter(campaign__slug=slug, user=user).first()
    if membership is None:
        raise Http404
    if membership.role not in roles:
        raise PermissionDenied(f"Your role in this campaign ({membership.role}) does not allow this.")
    campaign = membership.campaign
    campaign.user_role = membership.role
    campaign.user_paused = membership.is_paused
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
    if not user.is_authenticated:
        raise Http404
    role = Membership.objects.filter(campaign=OuterRef("campaign"), user=user).values("role")[:1]
    task = Task.objects.select_related("campaign").annotate(user_role=Subquery(role)).filter(pk=task_id).first()
    if task is None:
        raise Http404
    if user.is_superuser:
        task.user_role = Role.ADMIN
    if task.user_role is None:
        raise Http404
    if task.user_role not in LABELING_ROLES:
        raise PermissionDenied(f"Your role in this campaign ({task.user_role}) does not allow this.")
    return task


def can_create_campaigns(user) -> bool:
    return user.is_authenticated and (user.is_superuser or user.is_staff)


def assignment_of(user, task: Task) -> Assignment | None:
    return Assignment.objects.filter(task=task, labeler=user).first()
