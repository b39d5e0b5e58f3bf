"""Held-out evaluation of a policy a round made: `training.evaluate` on the campaign's evaluation split.

The figures go into the policy's metadata (`evaluation`), the run's metrics and the round report.
"""
from __future__ import annotations

from django.db import transaction

from annotate.exports.training_data import evaluation_prompts, prompt_chats
from annotate.jobs.engine import RunContext
from annotate.models import Campaign, ModelVersion
from annotate.runs.registry import checkpoint_dir

EVALUATION_SEED = 1234  # fixed: every round's policy answers the same prompts with the same draws


def evaluate_against_previous(ctx: RunContext, campaign: Campaign, policy: ModelVersion, previous: ModelVersion, reward: ModelVersion,
                              *, max_new_tokens: int = 64) -> dict | None:
    """Evaluate `policy` against `previous` under `reward` on the evaluation prompts; stores and returns the figures."""
    from training.evaluate import EvaluationConfig, evaluate_policy

    prompts = prompt_chats(evaluation_prompts(campaign))
    if not prompts:
        ctx.log("no evaluation prompts: the campaign has too few prompts for an evaluation split")
        return None
    ctx.progress(0.0, f"{len(prompts)} evaluation prompts")
    config = EvaluationConfig(max_new_tokens=max_new_tokens, seed=EVALUATION_SEED)
    figures = evaluate_policy(checkpoint_dir(policy), checkpoint_dir(previous), checkpoint_dir(reward), prompts, config).as_dict()
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=policy.pk)
        locked.metadata["evaluation"] = {**figures, "previous_policy": previous.name, "reward_model": reward.name, "seed": EVALUATION_SEED}
        locked.save(update_fields=["metadata"])
    policy.metadata = locked.metadata
    ctx.metrics(policy.round or 0, {k: v for k, v in figures.items() if k != "prompts"})
    ctx.progress(1.0, "evaluated")
    return figures
