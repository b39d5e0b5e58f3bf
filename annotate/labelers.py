"""Managing a campaign's people: add or create labelers, change roles, pause, deactivate; and how each labeler works.

Pausing is per campaign and reversible (annotate.quality.set_paused). Deactivating is the account
itself (`is_active=False`: no login, no token), so a campaign admin may only deactivate people
whose every campaign they administer; staff may deactivate anyone but staff.
"""
from __future__ import annotations

import secrets
import statistics
from collections import defaultdict
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count

from . import dashboard, quality
from .errors import DomainError
from .models import Assignment, Campaign, Judgement, Membership

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
    quality.set_paused(campaign, user, paused, (reason or "paused by an admin")[:200] if paused else "")
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


# HOW EACH LABELER WORKS


@dataclass
class LabelerStats:
    judgements: int = 0
    median_seconds: float | None = None  # per task: the time the labeler reported, else lease to submit
    skips: int = 0
    skip_rate: float | None = None  # skips / (judgements + skips)
    gold_accuracy: float | None = None  # mean gold score (annotate.quality.gold_score)
    gold_answered: int = 0
    agreement: float | None = None


def labeler_stats(campaign: Campaign, user_ids, agreement: dict | None = None) -> dict[int, LabelerStats]:
    """Stats of the given labelers in a campaign: three queries however many judgements they made."""
    ids = list(user_ids)
    stats = {uid: LabelerStats(agreement=(agreement or {}).get(uid)) for uid in ids}
    for uid, (count, median) in _judgements_and_median_seconds(campaign, ids).items():
        stats[uid].judgements, stats[uid].median_seconds = count, median
    skips = Assignment.objects.filter(campaign=campaign, labeler_id__in=ids, state=Assignment.State.SKIPPED)
    for uid, n in skips.values("labeler_id").annotate(n=Count("id")).values_list("labeler_id", "n"):
        stats[uid].skips = n
    scores: dict[int, list[float]] = defaultdict(list)
    gold = Judgement.objects.filter(task__campaign=campaign, task__is_gold=True, labeler_id__in=ids)
    for uid, ranking, answer in gold.values_list("labeler_id", "ranking", "task__gold_ranking"):
        if answer:
            scores[uid].append(quality.gold_score(ranking, answer))
    for uid, s in stats.items():
        s.skip_rate = s.skips / (s.judgements + s.skips) if s.judgements + s.skips else None
        s.gold_answered = len(scores[uid])
        s.gold_accuracy = sum(scores[uid]) / len(scores[uid]) if scores[uid] else None
    return stats


def agreement_by_labeler(campaign: Campaign) -> dict[int, float]:
    """Each labeler's agreement with the others, from the dashboard's statistics (cached while nothing changed)."""
    return dashboard.labeler_agreement(campaign)


# Seconds a judgement took: the time the labeler's page reported, else from lease to submit.
MEDIAN_SECONDS_SQL = """
SELECT j.labeler_id, count(*), percentile_cont(0.5) WITHIN GROUP (
    ORDER BY coalesce(j.time_spent_ms / 1000.0, greatest(extract(epoch FROM j.created_at - a.leased_at), 0)))
FROM annotate_judgement j JOIN annotate_task t ON t.id = j.task_id JOIN annotate_assignment a ON a.id = j.assignment_id
WHERE t.campaign_id = %s AND j.labeler_id = ANY(%s)
GROUP BY j.labeler_id
"""


def _judgements_and_median_seconds(campaign: Campaign, ids: list[int]) -> dict[int, tuple[int, float | None]]:
    """Per labeler: (judgements, median seconds per judgement). In SQL on PostgreSQL (a busy campaign
    has hundreds of thousands of judgements); SQLite has no median, so there the rows come to Python."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(MEDIAN_SECONDS_SQL, [campaign.pk, ids])
            return {uid: (count, float(median) if median is not None else None) for uid, count, median in cursor.fetchall()}
    times: dict[int, list[float]] = defaultdict(list)
    rows = Judgement.objects.filter(task__campaign=campaign, labeler_id__in=ids).values_list(
        "labeler_id", "time_spent_ms", "created_at", "assignment__leased_at"
    )
    for uid, ms, created, leased in rows:
        times[uid].append(ms / 1000 if ms is not None else max((created - leased).total_seconds(), 0.0))
    return {uid: (len(seconds), statistics.median(seconds)) for uid, seconds in times.items()}
