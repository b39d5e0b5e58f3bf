"""Using a reward model on the queue: active selection (label what the model is least sure of) and drift.

- `prioritize` (a job): scores the responses of every open task; a task whose responses score
  close together (the reward model can't tell them apart) gets a higher priority, so labelers
  see it first. Priority = round(100 * (1 - tanh(smallest gap between adjacent scores))).
- `drift` (a job): how often the reward model agrees with the humans' judgements made since it
  was trained: the share of strict pairs it orders as the labelers did. Each measurement is
  appended to the reward model's metadata["drift"], so the campaign page can plot it over time
  and tell when to retrain.
"""
from __future__ import annotations

import math

from django.db import transaction
from django.utils import timezone

from annotate.exports.training_data import ranked_judgements
from annotate.jobs.engine import InvalidParams, RunContext, RunFailed, register
from annotate.models import Campaign, ModelVersion, Task, TaskResponse
from annotate.runs.registry import latest_reward_model, reward_model_param
from annotate.runs.scoring import score_responses
from training.preferences import chat_with_context, ranking_to_pairs


def validate_params(campaign: Campaign | None, params: dict) -> dict:
    if campaign is None:
        raise InvalidParams("this run belongs to a campaign.", field="campaign")
    if unknown := sorted(set(params) - {"reward_model"}):
        raise InvalidParams(f"unknown params {unknown}; allowed: ['reward_model'].", field=unknown[0])
    name = params.get("reward_model")
    if name is None:
        latest = latest_reward_model(campaign)
        if latest is None:
            raise InvalidParams("no reward model has been trained for this campaign yet.", field="reward_model")
        name = latest.name
    else:
        name = reward_model_param(campaign, name)
    return {"reward_model": name}


def uncertainty_priority(scores: list[float]) -> int:
    ordered = sorted(scores)
    gap = min(b - a for a, b in zip(ordered, ordered[1:]))
    return round(100 * (1 - math.tanh(gap)))


def run_prioritize(ctx: RunContext) -> dict:
    version = ModelVersion.objects.get(name=ctx.params["reward_model"])
    tasks = list(Task.objects.filter(campaign=ctx.run.campaign, remaining__gt=0, is_gold=False).select_related("prompt").order_by("id"))
    texts: dict[int, list[str]] = {}
    for task_id, text in TaskResponse.objects.filter(task__in=tasks).order_by("task_id", "position").values_list("task_id", "response__text"):
        texts.setdefault(task_id, []).append(text)
    for i, task in enumerate(tasks, 1):
        chat = chat_with_context(task.prompt.messages, task.prompt.context)
        task.priority = uncertainty_priority(score_responses(version, chat, texts[task.pk]))
        if i % 20 == 0 or i == len(tasks):
            ctx.progress(i / len(tasks), f"{i} of {len(tasks)} tasks scored")
            ctx.check_cancelled()
    with transaction.atomic():
        Task.objects.bulk_update(tasks, ["priority"], batch_size=1000)
    return {"tasks": len(tasks), "reward_model": version.name}


def run_drift(ctx: RunContext) -> dict:
    version = ModelVersion.objects.get(name=ctx.params["reward_model"])
    # the rule training uses: paused labelers' judgements are left out (as the snapshot's filters do)
    judgements = [j for j in ranked_judgements(ctx.campaign, since=version.created_at) if not j.excluded]
    agree = total = 0
    for i, judgement in enumerate(judgements, 1):
        ids = list(judgement.responses)
        scores = dict(zip(ids, score_responses(version, judgement.prompt_messages, [judgement.responses[r] for r in ids])))
        for better, worse in ranking_to_pairs(judgement.ranking):
            total += 1
            agree += scores[better] > scores[worse]
        if i % 20 == 0:
            ctx.progress(i / len(judgements), f"{i} of {len(judgements)} judgements")
            ctx.check_cancelled()
    if total == 0:
        raise RunFailed(f"no new judgements with a preference since {version.name} was trained.")
    point = {"at": timezone.now().isoformat(), "judgements": len(judgements), "pairs": total, "agreement": agree / total}
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        locked.metadata["drift"] = [*locked.metadata.get("drift", []), point]
        locked.save(update_fields=["metadata"])
    ctx.metrics(len(locked.metadata["drift"]), {"drift/agreement": agree / total})
    return point


register("prioritize", validate_params, run_prioritize)
register("drift", validate_params, run_drift)
