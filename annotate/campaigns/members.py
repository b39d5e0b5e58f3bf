"""Managing a campaign's people: add or create labelers, change roles, pause, deactivate.

Pausing is per campaign and reversible (annotate.labeling.gold.set_paused). Deactivating is the account
itself (`is_active=False`: no login, no token), so a campaign admin may only deactivate people
whose every campaign they administer; staff may deactivate anyone but staff.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction

from annotate.core.errors import DomainError
from annotate.labeling import gold
from annotate.models import Campaign, Membership

Role = Membership.Role


class MemberError(DomainError):
    code = "invalid_member"


class NotAllowed(DomainError):
    status = 403
    code = "not_allowed"


@dataclass
class Added:
    membership: Membership
    created_user: bool
    password: str | None  # only when the account was created now: shown once, never stored in clear


def add_member(campaign: Campaign, username: str, role: str = Role.LABELER, *, email: str = "") -> Added:
    """Add an existing user to the campaign (or change their role), or create the account with a generated password."""
    if role not in Role.values:
        raise MemberError(f"role must be one of {Role.values}.", field="role")
    username = (username or "").strip()
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        raise MemberError("a username has letters, digits and @/./+/-/_ only.", field="username") from None
    if not 0 < len(username) <= 150:
        raise MemberError("a username has 1 to 150 characters.", field="username")
    User = get_user_model()
    with transaction.atomic():
        user = User.objects.filter(username=username).first()
        password = None
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(username=username, email=email or "", password=password)
        membership, _ = Membership.objects.update_or_create(campaign=campaign, user=user, defaults={"role": role})
    return Added(membership=membership, created_user=password is not None, password=password)


def change_role(campaign: Campaign, requester, user, role: str) -> Membership:
    if role not in Role.values:
        raise MemberError(f"role must be one of {Role.values}.", field="role")
    membership = _membership(campaign, user)
    if membership.role == Role.ADMIN and role != Role.ADMIN and not _other_admins(campaign, user):
        raise MemberError("the campaign would have no admin left; make someone else admin first.", field="role")
    Membership.objects.filter(pk=membership.pk).update(role=role)
    membership.role = role
    return membership


def set_paused(campaign: Campaign, user, paused: bool, reason: str = "") -> Membership:
    membership = _membership(campaign, user)
    gold.set_paused(campaign, user, paused, (reason or "paused by an admin")[:200] if paused else "")
    membership.refresh_from_db()
    return membership


def set_active(requester, user, active: bool) -> None:
    """Deactivate or reactivate an account (see the module docstring for who may)."""
    if user.pk == requester.pk:
        raise NotAllowed("you cannot deactivate your own account.")
    if (user.is_staff or user.is_superuser) and not requester.is_superuser:
        raise NotAllowed(f"{user.username} is staff; only a superuser can change their account.")
    if not (requester.is_staff or requester.is_superuser):
        theirs = set(Membership.objects.filter(user=user).values_list("campaign_id", flat=True))
        mine = set(Membership.objects.filter(user=requester, role=Role.ADMIN).values_list("campaign_id", flat=True))
        if theirs - mine:
            raise NotAllowed(f"{user.username} is also in campaigns you do not administer; pause them here, or ask staff to deactivate the account.")
    type(user).objects.filter(pk=user.pk).update(is_active=active)
    user.is_active = active


def _membership(campaign: Campaign, user) -> Membership:
    membership = Membership.objects.filter(campaign=campaign, user=user).first()
    if membership is None:
        raise MemberError(f"{user.username} is not in this campaign.", field="username")
    return membership


def _other_admins(campaign: Campaign, user) -> bool:
    return Membership.objects.filter(campaign=campaign, role=Role.ADMIN).exclude(user=user).exists()
