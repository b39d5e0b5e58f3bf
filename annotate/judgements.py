"""Writes of judgements: validate, then store. The only way a judgement is written.

A judgement on a lease that lapsed (expired) or was skipped is still a human's work:
- if the task still has a free slot, it takes the slot and counts;
- otherwise it is stored as surplus (`is_surplus=True`): kept and exported, not counted
  toward the task's overlap.
A replay with the same idempotency key returns the judgement already stored.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from . import broadcast, rows
from .errors import AlreadySubmitted, IdempotencyConflict, InvalidRanking, NotLeased
from .models import Assignment, Judgement, Task
from .quality import apply_gold_threshold

State = Assignment.State
ALLOWED_FLAGS = frozenset({"all_bad", "unsafe", "needs_expert", "prompt_problem"})
MAX_RATIONALE = 10_000


@dataclass
class Submission:
    judgement: Judgement
    replayed: bool


def validate_ranking(ranking, response_ids: list[int]) -> list[list[int]]:
    """A ranking as groups of ids, best first, covering each of the task's responses exactly once."""
    if not isinstance(ranking, list) or not ranking:
        raise InvalidRanking("ranking must be a non-empty list of groups of response ids.", field="ranking")
    seen: list[int] = []
    groups: list[list[int]] = []
    for group in ranking:
        if not isinstance(group, list) or not group:
            raise InvalidRanking("each group in ranking must be a non-empty list of response ids.", field="ranking")
        for rid in group:
            if isinstance(rid, bool) or not isinstance(rid, int):
                raise InvalidRanking(f"response id {rid!r} is not an integer.", field="ranking")
        groups.append(list(group))
        seen.extend(group)
    expected = set(response_ids)
    unknown = [rid for rid in seen if rid not in expected]
    if unknown:
        raise InvalidRanking(f"ranking names responses that are not in this task: {unknown}.", field="ranking")
    repeated = sorted({rid for rid in seen if seen.count(rid) > 1})
    if repeated:
        raise InvalidRanking(f"ranking repeats responses: {repeated}.", field="ranking")
    missing = sorted(expected - set(seen))
    if missing:
        raise InvalidRanking(f"ranking misses responses: {missing}.", field="ranking")
    return groups


def validate_flags(flags) -> list[str]:
    if flags is None:
        return []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise InvalidRanking("flags must be a list of strings.", field="flags")
    unknown = sorted(set(flags) - ALLOWED_FLAGS)
    if unknown:
        raise InvalidRanking(f"unknown flags {unknown}; allowed: {sorted(ALLOWED_FLAGS)}.", field="flags")
    return sorted(set(flags))


def validate_ratings(ratings, criteria: list[dict], response_ids: list[int]) -> dict:
    """Per-response ratings on the campaign's criteria: {"<response id>": {"<criterion>": int}}; all optional."""
    if ratings in (None, {}):
        return {}
    if not criteria:
        raise InvalidRanking("this campaign asks for no ratings.", field="ratings")
    if not isinstance(ratings, dict):
        raise InvalidRanking("ratings must be an object keyed by response id.", field="ratings")
    by_name = {c["name"]: c for c in criteria}
    clean: dict[str, dict[str, int]] = {}
    for rid, values in ratings.items():
        if not str(rid).isdigit() or int(rid) not in response_ids:
            raise InvalidRanking(f"ratings name response {rid!r}, which is not in this task.", field="ratings")
        if not isinstance(values, dict):
            raise InvalidRanking("each response's ratings must be an object of criterion: value.", field="ratings")
        for name, value in values.items():
            criterion = by_name.get(name)
            if criterion is None:
                raise InvalidRanking(f"unknown criterion {name!r}; this campaign has {sorted(by_name)}.", field="ratings")
            if isinstance(value, bool) or not isinstance(value, int) or not criterion["min"] <= value <= criterion["max"]:
                raise InvalidRanking(f"{name} must be an integer from {criterion['min']} to {criterion['max']}.", field="ratings")
        clean[str(int(rid))] = dict(values)
    return clean


def task_response_ids(task: Task) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT response_id FROM annotate_taskresponse WHERE task_id = %s ORDER BY position", [task.pk])
        return [row[0] for row in cursor.fetchall()]


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
    if time_spent_ms is not None and (isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int) or time_spent_ms < 0):
        raise InvalidRanking("time_spent_ms must be a non-negative integer.", field="time_spent_ms")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 100):
        raise InvalidRanking("the idempotency key must be 1 to 100 characters.", field="idempotency_key")
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
                broadcast.judgement_stored(submission.judgement)
            return submission
    except IntegrityError:
        # The same key on another task (a concurrent twin on this task is caught under the lock).
        raise IdempotencyConflict("This idempotency key was already used for another judgement.", field="idempotency_key")


def _store(labeler, task, groups, rationale, flags, ratings, time_spent_ms, key) -> Submission:
    # Hand-written statements: this is the hot path of every labeler (the ORM's query building
    # costs more than the round trips). Lock the task first: two tabs or a retry can submit at once.
    lock = rows.for_update()
    with connection.cursor() as cursor:
        cursor.execute("SELECT remaining FROM annotate_task WHERE id = %s" + lock, [task.pk])
        remaining = cursor.fetchone()[0]
        cursor.execute("SELECT id, state FROM annotate_assignment WHERE task_id = %s AND labeler_id = %s" + lock, [task.pk, labeler.pk])
        held = cursor.fetchone()
    if held is None:
        raise NotLeased("This task is not leased to you: ask for the next task first.")
    assignment_id, state = held
    if state == State.SUBMITTED:
        existing = Judgement.objects.filter(assignment_id=assignment_id).first()
        if key is not None and existing is not None and existing.idempotency_key == key:
            return Submission(existing, replayed=True)
        raise AlreadySubmitted("You already submitted a judgement for this task.")
    counted = _take_slot(task.pk, state, remaining)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE annotate_assignment SET state = %s, finished_at = %s WHERE id = %s",
            [State.SUBMITTED, connection.ops.adapt_datetimefield_value(now), assignment_id],
        )
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
    return Submission(rows.insert(judgement), replayed=False)


def _take_slot(task_id: int, state: str, remaining: int) -> bool:
    """Count the judgement toward the task's overlap if a slot is (still) held or free; False means surplus."""
    with connection.cursor() as cursor:
        if state == State.OPEN:
            # The lease holds a slot, even if it lapsed a moment ago and was not reclaimed yet.
            cursor.execute("UPDATE annotate_task SET judgements_received = judgements_received + 1 WHERE id = %s", [task_id])
            return True
        if remaining > 0:
            cursor.execute(
                "UPDATE annotate_task SET remaining = remaining - 1, judgements_received = judgements_received + 1 WHERE id = %s",
                [task_id],
            )
            return True
    return False
