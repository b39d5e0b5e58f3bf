"""The assignment engine: what does this labeler see next, and what happens to leases.

Rules
- A task is served to at most `judgements_needed` labelers at a time: `Task.remaining`
  counts the slots not held by an open lease or a counted judgement, and it only
  changes under a row lock on the task (`SELECT ... FOR UPDATE SKIP LOCKED`, so
  concurrent labelers never wait on each other: each takes the next free task).
- Never twice to the same labeler: one Assignment row per (task, labeler), enforced
  by a unique constraint, whatever its state (open, submitted, expired, skipped).
- Higher priority first, then oldest (lowest id).
- A labeler who already holds an open, unexpired lease in the campaign gets that
  task again (a reload or a second tab continues the same task, nothing is hoarded).
- Leases lapse after the campaign's lease time: `reclaim_expired_leases` marks them
  expired and returns their slots to the pool. It runs whenever a labeler finds the
  queue empty, and from `manage.py housekeeping` (run it every minute or so to
  keep lapsed high-priority tasks from waiting until the queue drains). A judgement submitted on a lapsed
  lease is still accepted (see `annotate.labeling.judgements`).
- Skipping returns the slot to the pool; the task is not served to that labeler again.
- Gold tasks (known answer) stay out of the normal queue (`remaining` 0) and are mixed
  into each labeler's stream at the campaign's `gold_rate`: the n-th task a labeler gets
  is gold when floor(n * rate) > floor((n - 1) * rate). Each labeler sees each gold task once.
- Paused labelers (see `annotate.labeling.gold`) get no tasks.

Lock order everywhere: task row first, then its assignment rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from annotate.core import sql
from annotate.core.errors import CampaignNotOpen, LabelerPaused, NotLeased
from annotate.models import Assignment, Campaign, Membership, Task

State = Assignment.State


@dataclass
class Lease:
    assignment: Assignment
    task: Task
    is_new: bool


def next_task_for(labeler, campaign: Campaign) -> Lease | None:
    """Lease the next task for `labeler` in `campaign`, or None when nothing is left for them.

    A campaign fetched by `access.campaign_for` carries the caller's pause flag (`user_paused`),
    which saves a query; otherwise the membership is read here.
    """
    if campaign.status != Campaign.Status.ACTIVE:
        raise CampaignNotOpen(f"Campaign {campaign.slug!r} is {campaign.status}, not active.")
    now = timezone.now()
    current = _current_lease(labeler, campaign, now)
    if current is not None:
        return current
    paused = getattr(campaign, "user_paused", None)
    if paused is None:
        paused = Membership.objects.filter(campaign=campaign, user=labeler, is_paused=True).exists()
    if paused:
        raise LabelerPaused("You are paused in this campaign; ask its admins.")
    if campaign.gold_rate > 0 and _gold_turn(labeler, campaign):
        lease = _lease_gold_task(labeler, campaign, now)
        if lease is not None:
            return lease
    lease = _lease_with_retries(labeler, campaign, now)
    if lease is None and reclaim_expired_leases(campaign, now):
        lease = _lease_with_retries(labeler, campaign, now)
    return lease


def _current_lease(labeler, campaign: Campaign, now) -> Lease | None:
    """The open, unexpired lease the labeler already holds in the campaign (a reload, a second tab)."""
    row = sql.current_lease(labeler.pk, campaign.pk, now)  # hand-written: this runs on every request for a task
    if row is None:
        return None
    split = sql.width(Assignment)
    assignment = sql.instance(Assignment, row[:split])
    task = sql.instance(Task, row[split:])
    assignment.task = task
    task.campaign = campaign
    return Lease(assignment, task, is_new=False)


def _lease_with_retries(labeler, campaign: Campaign, now) -> Lease | None:
    for _ in range(3):  # a lost race on the unique constraint: try the next task
        try:
            return _lease_free_task(labeler, campaign, now)
        except IntegrityError:
            continue
    return None


def _lease_free_task(labeler, campaign: Campaign, now) -> Lease | None:
    until = now + timedelta(seconds=campaign.lease_seconds)
    if connection.vendor == "postgresql":  # pick, count and lease in one statement
        row = sql.lease_free_task(labeler.pk, campaign.pk, now, until)
        if row is None:
            return None
        task = Task(campaign=campaign, **dict(zip(sql.LEASED_TASK_FIELDS, row[1:])))
        assignment = Assignment(pk=row[0], task=task, labeler=labeler, campaign=campaign, state=State.OPEN, leased_at=now, leased_until=until)
        return Lease(assignment, task, is_new=True)
    with transaction.atomic():
        free_task = (
            Task.objects.filter(campaign=campaign, remaining__gt=0)
            .exclude(assignments__labeler=labeler)
            .order_by("-priority", "id")
            .select_for_update(skip_locked=True, of=("self",))
            .first()
        )
        if free_task is None:
            return None
        task = free_task
        assignment = Assignment.objects.create(
            task=task,
            labeler=labeler,
            campaign=campaign,
            state=State.OPEN,
            leased_at=now,
            leased_until=until,
        )
        Task.objects.filter(pk=task.pk).update(remaining=F("remaining") - 1)
        task.remaining -= 1
    return Lease(assignment, task, is_new=True)


def _gold_turn(labeler, campaign: Campaign) -> bool:
    served = Assignment.objects.filter(labeler=labeler, campaign=campaign).count()
    return math.floor((served + 1) * campaign.gold_rate) > math.floor(served * campaign.gold_rate)


def _lease_gold_task(labeler, campaign: Campaign, now) -> Lease | None:
    """A gold task this labeler has not seen, at random (gold is not limited by overlap)."""
    task = Task.objects.filter(campaign=campaign, is_gold=True).exclude(assignments__labeler=labeler).order_by("?").first()
    if task is None:
        return None
    try:
        with transaction.atomic():
            assignment = Assignment.objects.create(
                task=task, labeler=labeler, campaign=campaign, state=State.OPEN,
                leased_at=now, leased_until=now + timedelta(seconds=campaign.lease_seconds),
            )
    except IntegrityError:
        return None
    return Lease(assignment, task, is_new=True)


def skip(labeler, task: Task) -> None:
    """Give the task back; it is never served to this labeler again."""
    with transaction.atomic():
        Task.objects.select_for_update().get(pk=task.pk)
        assignment = Assignment.objects.select_for_update().filter(task=task, labeler=labeler).first()
        if assignment is None:
            raise NotLeased("This task is not leased to you.")
        if assignment.state != State.OPEN:
            return  # already submitted, skipped or expired: its slot is not held
        assignment.state = State.SKIPPED
        assignment.finished_at = timezone.now()
        assignment.save(update_fields=["state", "finished_at"])
        Task.objects.filter(pk=task.pk, is_gold=False).update(remaining=F("remaining") + 1)


def withdraw_from_queue(task: Task) -> None:
    """A task turned gold leaves the normal queue: no free slots (gold is served at the gold rate instead)."""
    Task.objects.filter(pk=task.pk).update(remaining=0)


def apply_overlap(campaign: Campaign, overlap: int) -> None:
    """A new overlap for every non-gold task: its free slots grow or shrink by the difference, never below zero."""
    # One UPDATE: the right-hand sides read the row as it was, and it locks each row it changes.
    Task.objects.filter(campaign=campaign, is_gold=False).update(
        judgements_needed=overlap,
        remaining=Greatest(F("remaining") + overlap - F("judgements_needed"), 0),
    )


def reclaim_expired_leases(campaign: Campaign | None = None, now=None) -> int:
    """Mark lapsed open leases expired and return their slots; returns how many were reclaimed.

    Tasks locked by someone else are skipped this round (they will be reclaimed next time).
    """
    now = now or timezone.now()
    lapsed = Assignment.objects.filter(state=State.OPEN, leased_until__lte=now)
    if campaign is not None:
        lapsed = lapsed.filter(campaign=campaign)
    task_ids = list(lapsed.values_list("task_id", flat=True).distinct()[:1000])
    reclaimed = 0
    for task_id in task_ids:
        with transaction.atomic():
            if not Task.objects.select_for_update(skip_locked=True).filter(pk=task_id).exists():
                continue
            count = Assignment.objects.filter(task_id=task_id, state=State.OPEN, leased_until__lte=now).update(
                state=State.EXPIRED, finished_at=now
            )
            if count:
                Task.objects.filter(pk=task_id, is_gold=False).update(remaining=F("remaining") + count)
                reclaimed += count
    return reclaimed


def progress(campaign: Campaign, labeler=None) -> dict:
    """Counts for progress bars and the API, in one query over the campaign's tasks."""
    result = Task.objects.filter(campaign=campaign).aggregate(
        tasks=Count("id"),
        open_tasks=Count("id", filter=Q(remaining__gt=0)),
        complete_tasks=Count("id", filter=Q(judgements_received__gte=F("judgements_needed"))),
        judgements_needed=Coalesce(Sum("judgements_needed"), 0),
        judgements_received=Coalesce(Sum("judgements_received"), 0),
    )
    if labeler is not None:
        result["labeler_submitted"] = Assignment.objects.filter(
            campaign=campaign, labeler=labeler, state=State.SUBMITTED
        ).count()
    return result
