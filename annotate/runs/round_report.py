"""A campaign's round report: per policy a round made, its reward model, its held-out evaluation and
the labelers' verdict on its head-to-head tasks against the previous policy.

`GET /api/v1/campaigns/{slug}/rounds/` and the campaign page's round section read `round_reports`;
the round report page adds, per policy, its reward and KL curves and a few evaluation examples (`round_details`).
"""
from __future__ import annotations

import math

from annotate.jobs.engine import metric_series
from annotate.models import Campaign, Judgement, ModelVersion, Response

EVALUATION_KEYS = ("prompts", "reward_mean", "previous_reward_mean", "kl", "mean_length", "eos_share", "rm_win_rate")
# The per-iteration metrics of the optimisation that made a policy: PPO's (`training.ppo`) or TRL RLOO's names,
# bare in a PPO/RLOO job, under `policy/` in a round. DPO and SFT record neither.
CURVES = {"mean reward": ("objective/scores", "reward"), "KL to the reference": ("objective/kl", "kl")}


def human_win_rate(new: ModelVersion, old: ModelVersion) -> tuple[float | None, int]:
    """How often labelers ranked `new`'s responses above `old`'s on tasks holding both; (rate, judgements).

    Each judgement scores the share of its (new, old) response pairs the new one won (ties half), so
    a k-way task with ⌈k/2⌉ new and ⌊k/2⌋ old responses counts once; the rate is the mean over judgements.
    """
    # two filter() calls: the task has a response of each model (not one response of both)
    rankings = list(
        Judgement.objects.filter(task__responses__model_version=new, task__is_gold=False)
        .filter(task__responses__model_version=old).distinct().values_list("ranking", flat=True)
    )
    ids = {rid for ranking in rankings for group in ranking for rid in group}
    model_of = dict(Response.objects.filter(pk__in=ids).values_list("id", "model_version_id"))
    scores = [score for ranking in rankings if (score := _new_share(ranking, model_of, new.pk, old.pk)) is not None]
    return (sum(scores) / len(scores) if scores else None), len(scores)


def _new_share(ranking: list[list[int]], model_of: dict, new_id: int, old_id: int) -> float | None:
    place = {rid: i for i, group in enumerate(ranking) for rid in group}
    news = [place[r] for r in place if model_of.get(r) == new_id]
    olds = [place[r] for r in place if model_of.get(r) == old_id]
    if not news or not olds:
        return None
    won = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a in news for b in olds)
    return won / (len(news) * len(olds))


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion `rate` observed over n trials."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def round_reports(campaign: Campaign) -> list[dict]:
    """Oldest first, one per policy a round or policy job made (null where not known yet)."""
    policies = (
        ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, metadata__campaign=campaign.slug)
        .exclude(parent=None).select_related("parent", "run").order_by("round", "created_at")
    )
    return [_report(policy) for policy in policies]


def _report(policy: ModelVersion) -> dict:
    reward_name = policy.metadata.get("reward_model") or ((policy.run.result or {}).get("reward_model") if policy.run else None)
    reward = ModelVersion.objects.filter(name=reward_name, kind=ModelVersion.Kind.REWARD).first() if reward_name else None
    evaluation = policy.metadata.get("evaluation")
    parent = policy.parent
    assert parent is not None  # round_reports selects policies with a parent
    rate, n = human_win_rate(policy, parent)
    low, high = wilson_interval(rate, n) if rate is not None else (None, None)  # None: no judgements (n == 0)
    return {
        "round": policy.round,
        "policy": policy.name,
        "previous_policy": parent.name,
        "reward_model": reward_name,
        "reward_model_accuracy": reward.metadata.get("metrics", {}).get("eval/accuracy") if reward else None,
        "evaluation": {key: evaluation.get(key) for key in EVALUATION_KEYS} if evaluation else None,
        "human_win_rate": {"value": rate, "low": low, "high": high, "judgements": n},
    }


def round_details(campaign: Campaign) -> dict[str, dict]:
    """Per policy name in `round_reports`: {curves: {label: [(step, value)]}, examples: [...]} for the round report page."""
    policies = ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, metadata__campaign=campaign.slug).exclude(parent=None).select_related("run")
    return {policy.name: {"curves": training_curves(policy), "examples": (policy.metadata.get("evaluation") or {}).get("examples", [])}
            for policy in policies}


def training_curves(policy: ModelVersion) -> dict[str, list[tuple[int, float]]]:
    """Mean reward and KL per iteration of the run that optimised the policy (empty when it recorded none)."""
    series = metric_series(policy.run) if policy.run else {}
    curves = {}
    for label, names in CURVES.items():
        found = [series[prefix + name] for name in names for prefix in ("policy/", "") if series.get(prefix + name)]
        if found:
            curves[label] = found[0]
    return curves
