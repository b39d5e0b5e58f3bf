"""Managing a campaign's people: add or create labelers, change roles, pause, deactivate.

Who may add whom (`add_member`, `add_existing_member`):
- staff add any existing user, or create an account;
- a campaign admin who is not staff adds an existing user only if that user is already in a campaign
  the admin administers (someone they already work with). Any other existing name gets the same
  neutral answer as a name that does not exist, so that adding people does not tell whether a
  username is taken elsewhere: `add_existing_member` says "no user with this username"; `add_member`
  creates the account when the name is free and otherwise says the name cannot be used here.
- someone already in the campaign only changes role, through `change_role`.

The last-admin rule: a campaign always keeps an admin, on every path that changes a role.

Pausing is per campaign and reversible (annotate.labeling.gold.set_paused). Deactivating is the account
itself (`is_active=False`: no login, no token). Staff may deactivate anyone but staff (superusers: anyone
but themselves). A campaign admin who is not staff may deactivate an account only if every campaign
of that account is one they administer AND the account was created through one of those campaigns
(`Membership.created_account`); an account with no such record (made by staff, `adduser`, or before the
record existed) is for staff.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction

from annotate import access
from annotate.core.errors import DomainError
from annotate.labeling import gold
from annotate.models import Campaign, Membership

Role = Membership.Role


class MemberError(DomainError):
    code = "invalid_member"


class NotAllowed(DomainError):
    status = 403
    code = "not_allowed"


UNUSABLE_NAME = "this username cannot be added here: choose another name for a new account, or ask staff to add an existing one."
UNKNOWN_NAME = "no user with this username."


@dataclass
class Added:
    membership: Membership
    created_user: bool
    password: str | None  # only when the account was created now: shown once, never stored in clear


def add_member(campaign: Campaign, requester, username: str, role: str = Role.LABELER, *, email: str = "") -> Added:
    """Add a user to the campaign (or change a member's role), creating the account with a generated password
    when the name is free. See the module docstring for whom a campaign admin may add."""
    _check_role(role)
    username = _clean_username(username)
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = get_user_model().objects.create_user(username=username, email=email or "", password=password)
            membership = Membership.objects.create(campaign=campaign, user=user, role=role, created_account=True)
            return Added(membership=membership, created_user=True, password=password)
        if not _may_add(requester, campaign, user):
            raise MemberError(UNUSABLE_NAME, field="username")
        return Added(membership=_join_or_change(campaign, requester, user, role), created_user=False, password=None)


def add_existing_member(campaign: Campaign, requester, username: str, role: str) -> Membership:
    """Add an existing user with a role, or change a member's role; never creates an account."""
    _check_role(role)
    with transaction.atomic():
        user = get_user_model().objects.filter(username=(username or "").strip()).first()
        if user is None or not _may_add(requester, campaign, user):
            raise MemberError(UNKNOWN_NAME, field="username")
        return _join_or_change(campaign, requester, user, role)


def change_role(campaign: Campaign, requester, user, role: str) -> Membership:
    """A member's new role; the campaign's last admin cannot step down."""
    _check_role(role)
    with transaction.atomic():
        # lock the campaign's admins: two admins demoting each other at once would leave none
        admins = list(Membership.objects.select_for_update().filter(campaign=campaign, role=Role.ADMIN).values_list("user_id", flat=True))
        membership = _membership(campaign, user)
        if membership.role == Role.ADMIN and role != Role.ADMIN and not set(admins) - {user.pk}:
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
    if access.is_staff(user) and not requester.is_superuser:
        raise NotAllowed(f"{user.username} is staff; only a superuser can change their account.")
    if not access.is_staff(requester):
        theirs = dict(Membership.objects.filter(user=user).values_list("campaign_id", "created_account"))
        mine = _administered(requester)
        if set(theirs) - mine:
            raise NotAllowed(f"{user.username} is also in campaigns you do not administer; pause them here, or ask staff to deactivate the account.")
        if not any(theirs.values()):
            raise NotAllowed(f"{user.username}'s account was not created through your campaigns; pause them here, or ask staff to deactivate it.")
    type(user).objects.filter(pk=user.pk).update(is_active=active)
    user.is_active = active


def _membership(campaign: Campaign, user) -> Membership:
    membership = Membership.objects.filter(campaign=campaign, user=user).first()
    if membership is None:
        raise MemberError(f"{user.username} is not in this campaign.", field="username")
    return membership


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise MemberError(f"role must be one of {Role.values}.", field="role")


def _clean_username(username: str) -> str:
    username = (username or "").strip()
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        raise MemberError("a username has letters, digits and @/./+/-/_ only.", field="username") from None
    if not 0 < len(username) <= 150:
        raise MemberError("a username has 1 to 150 characters.", field="username")
    return username


def _administered(user) -> set[int]:
    return set(Membership.objects.filter(user=user, role=Role.ADMIN).values_list("campaign_id", flat=True))


def _may_add(requester, campaign: Campaign, user) -> bool:
    """Staff add anyone; a campaign admin adds members of this campaign or of another campaign they administer."""
    if access.is_staff(requester):
        return True
    return Membership.objects.filter(user=user, campaign_id__in=_administered(requester) | {campaign.pk}).exists()


def _join_or_change(campaign: Campaign, requester, user, role: str) -> Membership:
    if Membership.objects.filter(campaign=campaign, user=user).exists():
        return change_role(campaign, requester, user, role)
    return Membership.objects.create(campaign=campaign, user=user, role=role)
