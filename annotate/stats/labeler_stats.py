"""How each labeler of a campaign works: judgements, median time, skips, gold accuracy, agreement."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from django.db import connection
from django.db.models import Count

from annotate.core import sql
from annotate.labeling import gold
from annotate.models import Assignment, Campaign, Judgement
from annotate.stats import dashboard


@dataclass
class LabelerStats:
    judgements: int = 0
    median_seconds: float | None = None  # per task: the time the labeler reported, else lease to submit
    skips: int = 0
    skip_rate: float | None = None  # skips / (judgements + skips)
    gold_accuracy: float | None = None  # mean gold score (annotate.labeling.gold.gold_score)
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
    gold_judgements = Judgement.objects.filter(task__campaign=campaign, task__is_gold=True, labeler_id__in=ids)
    for uid, ranking, answer in gold_judgements.values_list("labeler_id", "ranking", "task__gold_ranking"):
        if answer:
            scores[uid].append(gold.gold_score(ranking, answer))
    for uid, s in stats.items():
        s.skip_rate = s.skips / (s.judgements + s.skips) if s.judgements + s.skips else None
        s.gold_answered = len(scores[uid])
        s.gold_accuracy = sum(scores[uid]) / len(scores[uid]) if scores[uid] else None
    return stats


def agreement_by_labeler(campaign: Campaign) -> dict[int, float]:
    """Each labeler's agreement with the others, from the dashboard's statistics (cached while nothing changed)."""
    return dashboard.labeler_agreement(campaign)


def _judgements_and_median_seconds(campaign: Campaign, ids: list[int]) -> dict[int, tuple[int, float | None]]:
    """Per labeler: (judgements, median seconds per judgement). In SQL on PostgreSQL (a busy campaign
    has hundreds of thousands of judgements); SQLite has no median, so there the rows come to Python."""
    if connection.vendor == "postgresql":
        rows = sql.judgements_and_median_seconds(campaign.pk, ids)
        return {uid: (count, float(median) if median is not None else None) for uid, count, median in rows}
    times: dict[int, list[float]] = defaultdict(list)
    judgements = Judgement.objects.filter(task__campaign=campaign, labeler_id__in=ids).values_list(
        "labeler_id", "time_spent_ms", "created_at", "assignment__leased_at"
    )
    for uid, ms, created, leased in judgements:
        times[uid].append(ms / 1000 if ms is not None else max((created - leased).total_seconds(), 0.0))
    return {uid: (len(seconds), statistics.median(seconds)) for uid, seconds in times.items()}
