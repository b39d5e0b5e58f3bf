"""Writes of judgements: validate, then store. The only way a judgement is written.

A judgement on a lease that lapsed (expired) or was skipped is still a human's work:
- if the task still has a free slot, it takes the slot and counts;
- otherwise it is stored as surplus (`is_surplus=True`): kept and exported, not counted
  toward the task's overlap.
A replay with the same idempotency key and the same judgement returns the judgement already stored;
the same key with a different ranking, rationale, flags or ratings is a conflict (409).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate.core import sql
from annotate.core.errors import AlreadySubmitted, IdempotencyConflict, InvalidRanking, NotLeased
from annotate.labeling.gold import apply_gold_threshold
from annotate.labeling.validation import (
    MAX_RATIONALE,
    task_response_ids,
    validate_flags,
    validate_ranking,
    validate_ratings,
    validate_time_spent,
)
from annotate.models import Assignment, Judgement, Task
from annotate.realtime import events

State = Assignment.State



@dataclass
class Submission:
    judgement: Judgement
    replayed: bool


def submit(
    labeler,
    task: Task,
    ranking,
    *,
    rationale: str = "",
    flags=None,
    ratings=None,
    time_spent_ms: int | None = None,
    key: str | None = None,
) -> Submission:
    """Store the labeler's judgement of `task`. Raises a DomainError for anything invalid; writes nothing then."""
    if rationale is None:
        rationale = ""
    if not isinstance(rationale, str) or len(rationale) > MAX_RATIONALE:
        raise InvalidRanking(f"rationale must be text of at most {MAX_RATIONALE} characters.", field="rationale")
    time_spent_ms = validate_time_spent(time_spent_ms)
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 100 or not key.isprintable()):
        raise InvalidRanking("the idempotency key must be 1 to 100 printable characters.", field="idempotency_key")
    flags = validate_flags(flags)
    response_ids = task_response_ids(task)
    groups = validate_ranking(ranking, response_ids)
    ratings = validate_ratings(ratings, task.campaign.criteria, response_ids)
    try:
        with transaction.atomic():
            submission = _store(labeler, task, groups, rationale, flags, ratings, time_spent_ms, key)
            if task.is_gold and not submission.replayed:
                apply_gold_threshold(task.campaign, labeler)
            if not submission.replayed:
                events.judgement_stored(submission.judgement)
            return submission
    except IntegrityError:
        # The same key on another task (a concurrent twin on this task is caught under the lock).
        raise IdempotencyConflict("This idempotency key was already used for another judgement.", field="idempotency_key") from None


def _store(labeler, task, groups, rationale, flags, ratings, time_spent_ms, key) -> Submission:
    # Hand-written statements: this is the hot path of every labeler (the ORM's query building
    # costs more than the round trips). Lock the task first: two tabs or a retry can submit at once.
    remaining = sql.task_remaining_locked(task.pk)
    held = sql.assignment_locked(task.pk, labeler.pk)
    if held is None:
        raise NotLeased("This task is not leased to you: ask for the next task first.")
    assignment_id, state = held
    if state == State.SUBMITTED:
        existing = Judgement.objects.filter(assignment_id=assignment_id).first()
        if key is not None and existing is not None and existing.idempotency_key == key:
            if (existing.ranking, existing.rationale, existing.flags, existing.ratings) != (groups, rationale, flags, ratings):
                raise IdempotencyConflict(
                    "This idempotency key was already used with a different judgement (ranking, rationale, flags or ratings).",
                    field="idempotency_key",
                )
            return Submission(existing, replayed=True)
        raise AlreadySubmitted("You already submitted a judgement for this task.")
    counted = _take_slot(task.pk, state, remaining)
    sql.mark_submitted(assignment_id, timezone.now())
    # A key already used on another task violates the unique constraint: IdempotencyConflict.
    judgement = Judgement(
        assignment_id=assignment_id,
        task=task,
        labeler=labeler,
        ranking=groups,
        rationale=rationale,
        flags=flags,
        ratings=ratings,
        time_spent_ms=time_spent_ms,
        idempotency_key=key,
        is_surplus=not counted,
    )
    return Submission(sql.insert(judgement), replayed=False)


def _take_slot(task_id: int, state: str, remaining: int) -> bool:
    """Count the judgement toward the task's overlap if a slot is (still) held or free; False means surplus."""
    if state == State.OPEN:
        # The lease holds a slot, even if it lapsed a moment ago and was not reclaimed yet.
        sql.count_judgement(task_id)
        return True
    if remaining > 0:
        sql.take_slot_and_count_judgement(task_id)
        return True
    return False
