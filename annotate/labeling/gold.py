"""Gold checks: score a judgement against a known answer, and pause labelers who fall below the bar.

A gold score is the share of the gold ranking's strict pairs (a better than b) that the labeler
ordered the same way; a tie where gold has an order counts as wrong, pairs gold ties are ignored.
A labeler's gold accuracy is the mean over their gold judgements.
"""
from __future__ import annotations

from itertools import combinations

from django.db import transaction

from annotate.core.errors import InvalidRanking
from annotate.labeling import assignment
from annotate.labeling.validation import task_response_ids, validate_ranking
from annotate.models import Campaign, Judgement, Membership, Task


def rank_of(ranking: list[list[int]]) -> dict[int, int]:
    return {rid: place for place, group in enumerate(ranking) for rid in group}


def gold_score(ranking: list[list[int]], gold: list[list[int]]) -> float:
    """Share of gold's strict pairs the ranking orders the same way (1.0 when gold orders none)."""
    mine, truth = rank_of(ranking), rank_of(gold)
    strict = [(a, b) for a, b in combinations(truth, 2) if truth[a] != truth[b]]
    if not strict:
        return 1.0
    agree = sum((mine[a] - mine[b]) * (truth[a] - truth[b]) > 0 for a, b in strict)
    return agree / len(strict)


def gold_accuracy(campaign: Campaign, labeler) -> tuple[float | None, int]:
    """(mean gold score, gold judgements answered) of a labeler in a campaign."""
    rows = Judgement.objects.filter(task__campaign=campaign, task__is_gold=True, labeler=labeler).values_list("ranking", "task__gold_ranking")
    scores = [gold_score(ranking, gold) for ranking, gold in rows if gold]
    return (sum(scores) / len(scores) if scores else None), len(scores)


def apply_gold_threshold(campaign: Campaign, labeler) -> bool:
    """Pause the labeler if they answered enough gold and their accuracy is under the bar; True if paused now."""
    if campaign.gold_min_accuracy <= 0:
        return False
    accuracy, answered = gold_accuracy(campaign, labeler)
    if accuracy is None or answered < campaign.gold_min_answered or accuracy >= campaign.gold_min_accuracy:
        return False
    reason = f"gold accuracy {accuracy:.2f} under {campaign.gold_min_accuracy:.2f} after {answered} gold tasks"
    return bool(Membership.objects.filter(campaign=campaign, user=labeler, is_paused=False).update(is_paused=True, paused_reason=reason))


def set_paused(campaign: Campaign, labeler, paused: bool, reason: str = "") -> None:
    """Pause or resume a labeler by hand (reversible: their judgements are kept either way)."""
    Membership.objects.filter(campaign=campaign, user=labeler).update(is_paused=paused, paused_reason=reason if paused else "")


@transaction.atomic
def mark_gold(task: Task, ranking) -> Task:
    """Make `task` a gold task with the given known answer (validated like a judgement)."""
    groups = validate_ranking(ranking, task_response_ids(task))
    if len(groups) < 2:
        raise InvalidRanking("a gold answer must order at least two responses (not all tied).", field="gold_ranking")
    Task.objects.filter(pk=task.pk).update(is_gold=True, gold_ranking=groups)
    assignment.withdraw_from_queue(task)
    task.refresh_from_db()
    return task


def paused_labeler_ids(campaign: Campaign) -> set[int]:
    """Labelers whose judgements exports and training leave out by default."""
    return set(Membership.objects.filter(campaign=campaign, is_paused=True).values_list("user_id", flat=True))
