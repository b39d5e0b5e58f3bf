"""The campaign dashboard's figures: progress, activity, agreement, and how the labelers rank the models.

`dashboard_figures` is plain JSON-safe data (the API serves it as is); `dashboard_context` adds
the plots for templates/annotate/_dashboard.html. Counts are aggregated in SQL; the statistics
(agreement, Bradley–Terry, criteria means) load the rankings in a fixed number of queries, so the
query count does not grow with the campaign.

The statistics are cached per campaign and recomputed when a judgement arrives or a labeler is
paused. A campaign whose statistics take a while to compute (many judgements) reuses them for up
to ten times that long, so a dashboard refreshed every second during a busy hour does not spend
the server on refits; `stats_current` says whether they include the latest judgement, `stats_as_of`
when they were computed.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Count, F, IntegerField, Max, Min, Q, Sum
from django.db.models.functions import Coalesce, Least, Trunc
from django.utils import timezone

from annotate.labeling.gold import paused_labeler_ids
from annotate.models import Assignment, Campaign, Judgement, Task
from annotate.stats import agreement, bradley_terry
from annotate.stats.dashboard_plots import activity_plot, strength_plot
from annotate.stats.rankings import CampaignRankings, campaign_rankings

BOOTSTRAP_ROUNDS = 100
LABELER_ROWS = 50  # the page lists the least agreeing first; the API returns them all
SLOW_STATS_SECONDS = 0.25  # statistics faster than this are always recomputed fresh
MAX_STATS_AGE_SECONDS = 60


def dashboard_figures(campaign: Campaign) -> dict:
    """Every figure of the dashboard as JSON-safe data."""
    now = timezone.now()
    activity = _activity(campaign, now)
    return {
        "campaign": campaign.slug,
        "as_of": now.isoformat(),
        "progress": _progress(campaign, now),
        "activity": activity,
        **_statistics(campaign, activity),
    }


def dashboard_context(campaign: Campaign) -> dict:
    """Template context for templates/annotate/_dashboard.html."""
    figures = dashboard_figures(campaign)
    return {
        "dashboard": figures,
        "updated": datetime.fromisoformat(figures["as_of"]),
        "stats_updated": datetime.fromisoformat(figures["stats_as_of"]),
        "bootstrap_rounds": BOOTSTRAP_ROUNDS,
        "labeler_rows": figures["labelers"][:LABELER_ROWS],
        "activity_plot": activity_plot(figures["activity"]),
        "strength_plot": strength_plot(figures["models"]),
    }


def _progress(campaign: Campaign, now) -> dict:
    """Judgement slots of the non-gold tasks: done (counted), in flight (open leases), remaining."""
    counts = Task.objects.filter(campaign=campaign, is_gold=False).aggregate(
        tasks=Count("id"),
        complete_tasks=Count("id", filter=Q(judgements_received__gte=F("judgements_needed"))),
        needed=Coalesce(Sum("judgements_needed"), 0),
        done=Coalesce(Sum(Least("judgements_received", "judgements_needed", output_field=IntegerField())), 0),
    )
    in_flight = Assignment.objects.filter(
        campaign=campaign, state=Assignment.State.OPEN, leased_until__gt=now, task__is_gold=False
    ).count()
    remaining = max(counts["needed"] - counts["done"] - in_flight, 0)
    share = counts["done"] / counts["needed"] if counts["needed"] else 0.0
    return {**counts, "in_flight": in_flight, "remaining": remaining, "share_done": share}


def _activity(campaign: Campaign, now) -> dict:
    """Judgements stored (gold and surplus included) over time, and the recent rate."""
    judged = Judgement.objects.filter(task__campaign=campaign)
    summary = judged.aggregate(
        judgements=Count("id"),
        last_id=Max("id"),
        first=Min("created_at"),
        last=Max("created_at"),
        last_hour=Count("id", filter=Q(created_at__gte=now - timedelta(hours=1))),
        last_10_minutes=Count("id", filter=Q(created_at__gte=now - timedelta(minutes=10))),
    )
    series, bucket = [], None
    if summary["judgements"]:
        bucket = _bucket(summary["last"] - summary["first"])
        rows = judged.annotate(t=Trunc("created_at", bucket)).values("t").annotate(n=Count("id")).order_by("t")
        series = [{"t": row["t"].isoformat(), "n": row["n"]} for row in rows]
    return {
        "judgements": summary["judgements"],
        "last_id": summary["last_id"],
        "last_hour": summary["last_hour"],
        "last_10_minutes": summary["last_10_minutes"],
        "per_minute": summary["last_10_minutes"] / 10,
        "bucket": bucket,
        "series": series,
    }


def _bucket(span: timedelta) -> str:
    """A bucket size that gives a readable number of bars (a few hundred at most)."""
    if span <= timedelta(hours=4):
        return "minute"
    if span <= timedelta(days=10):
        return "hour"
    return "day"


def labeler_agreement(campaign: Campaign) -> dict[int, float]:
    """User id -> agreement with the other labelers (as `agreement.labeler_agreement`), from the cached statistics."""
    # the cache's signature needs only the count and the newest id, not the activity's time series
    judged = Judgement.objects.filter(task__campaign=campaign).aggregate(judgements=Count("id"), last_id=Max("id"))
    stats = _statistics(campaign, judged)
    return {row["id"]: row["agreement"] for row in stats["labelers"] if row["agreement"] is not None}


def _statistics(campaign: Campaign, activity: dict) -> dict:
    """Agreement, labelers, models and criteria: cached while nothing they depend on changed.

    `activity` needs "judgements" (the campaign's count) and "last_id" (the newest judgement's id).
    """
    key = f"arbiter:dashboard:{campaign.pk}:{campaign.created_at.timestamp()}"
    paused = paused_labeler_ids(campaign)
    signature = (activity["judgements"], activity["last_id"], tuple(sorted(paused)), campaign.task_type, repr(campaign.criteria))
    cached = cache.get(key)
    if cached is not None:
        old_signature, computed_at, seconds, stats = cached
        fresh_enough = seconds >= SLOW_STATS_SECONDS and time.time() - computed_at < min(10 * seconds, MAX_STATS_AGE_SECONDS)
        if old_signature == signature or fresh_enough:
            return {**stats, "stats_current": old_signature == signature}
    started = time.perf_counter()
    stats = {"stats_as_of": timezone.now().isoformat(), **_compute_statistics(campaign, paused)}
    cache.set(key, (signature, time.time(), time.perf_counter() - started, stats), MAX_STATS_AGE_SECONDS * 10)
    return {**stats, "stats_current": True}


def _compute_statistics(campaign: Campaign, paused: set[int]) -> dict:
    data = campaign_rankings(campaign, with_ratings=bool(campaign.criteria), paused=paused)
    pairwise = campaign.task_type == Campaign.TaskType.PAIRWISE
    figures = agreement.agreement_of(data, pairwise=pairwise)
    standings = bradley_terry.standings(
        (j.ranking for j in data.counted()), data.model_of, rounds=BOOTSTRAP_ROUNDS, seed=campaign.pk
    )
    return {
        "agreement": {
            "judgements": figures.judgements,
            "labelers": figures.labelers,
            "shared_tasks": figures.shared_tasks,
            "alpha": figures.alpha,
            "raw_agreement": figures.raw_agreement,
            "kappa": figures.kappa,
            "pairwise": pairwise,
        },
        "labelers": _labelers(data, figures.per_labeler),
        "models": [
            {
                "id": row.model_id,
                "name": data.model_names.get(row.model_id, str(row.model_id)),
                "comparisons": row.comparisons,
                "wins": row.wins,
                "win_rate": row.win_rate,
                "strength": row.strength,
                "ci_low": _finite(row.ci_low),
                "ci_high": _finite(row.ci_high),
            }
            for row in standings
        ],
        "criteria": _criteria(campaign, data),
    }


def _finite(value: float) -> float | None:
    """JSON has no infinity: an open end of an interval is null."""
    return value if math.isfinite(value) else None


def _labelers(data: CampaignRankings, per_labeler: dict) -> list[dict]:
    """Each labeler's judgements and agreement with the others, least agreeing first."""
    judged: dict[int, int] = {}
    paused: dict[int, bool] = {}
    for j in data.judgements:
        judged[j.labeler_id] = judged.get(j.labeler_id, 0) + 1
        paused[j.labeler_id] = j.paused
    names = dict(get_user_model().objects.filter(pk__in=judged).values_list("id", "username")) if judged else {}
    rows = [
        {
            "id": uid,
            "username": names.get(uid, str(uid)),
            "judgements": n,
            "paused": paused[uid],
            "agreement": per_labeler[uid].agreement if uid in per_labeler else None,
            "pairs": per_labeler[uid].pairs if uid in per_labeler else 0,
        }
        for uid, n in judged.items()
    ]
    return sorted(rows, key=lambda r: (r["agreement"] is None, r["agreement"] or 0.0, r["username"]))


def _criteria(campaign: Campaign, data: CampaignRankings) -> list[dict]:
    """Mean rating per criterion and model version (paused labelers left out)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for j in data.counted():
        for rid, values in (j.ratings or {}).items():
            model_id = data.model_of.get(int(rid))
            if model_id is None:  # a rating of a response not among the campaign's (none is written; kept out of the means)
                continue
            for name, value in values.items():
                total = sums.setdefault((name, model_id), [0.0, 0])
                total[0] += value
                total[1] += 1
    result = []
    for criterion in campaign.criteria:
        name = criterion["name"]
        models = [
            {"id": mid, "name": data.model_names.get(mid, str(mid)), "mean": total / n, "n": n}
            for (crit, mid), (total, n) in sums.items()
            if crit == name
        ]
        result.append({**criterion, "label": criterion.get("label") or name, "models": sorted(models, key=lambda m: m["name"])})
    return result
