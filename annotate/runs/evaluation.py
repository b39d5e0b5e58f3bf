"""Held-out evaluation of a policy a round or a policy job made: `training.evaluate` on the campaign's evaluation split.

The figures go into the policy's metadata (`evaluation`, with a few prompts' answers of both
policies as `examples`), the run's metrics and result, and the round report.
"""
from __future__ import annotations

from django.db import transaction

from annotate.exports.training_data import evaluation_prompts, prompt_chats
from annotate.jobs.engine import RunContext
from annotate.models import Campaign, ModelVersion
from annotate.runs.registry import checkpoint_dir, latest_reward_model

EVALUATION_SEED = 1234  # fixed: every round's policy answers the same prompts with the same draws


def evaluate_against_previous(ctx: RunContext, campaign: Campaign, policy: ModelVersion, previous: ModelVersion, reward: ModelVersion | None,
                              *, max_new_tokens: int = 64, metric_prefix: str = "") -> dict | None:
    """Evaluate `policy` against `previous` under `reward` on the evaluation prompts; stores and returns the figures.

    Without a reward model the reward figures are None (KL, length and EOS share need only the policies).
    """
    from training.evaluate import EvaluationConfig, evaluate_policy

    prompts = evaluation_prompts(campaign)
    chats = prompt_chats(prompts)
    if not chats:
        ctx.log("no evaluation prompts: the campaign has too few prompts for an evaluation split")
        return None
    ctx.progress(0.0, f"{len(chats)} evaluation prompts" + ("" if reward else ", no reward model: no reward figures"))
    config = EvaluationConfig(max_new_tokens=max_new_tokens, seed=EVALUATION_SEED)
    reward_dir = checkpoint_dir(reward) if reward else None
    figures = evaluate_policy(checkpoint_dir(policy), checkpoint_dir(previous), reward_dir, chats, config).as_dict()
    figures["examples"] = _with_prompts(figures["examples"], list(prompts[: len(figures["examples"])]))
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=policy.pk)
        locked.metadata["evaluation"] = {**figures, "previous_policy": previous.name, "reward_model": reward.name if reward else None,
                                         "seed": EVALUATION_SEED}
        locked.save(update_fields=["metadata"])
    policy.metadata = locked.metadata
    ctx.metrics(policy.round or 0, {f"{metric_prefix}{k}": v for k, v in figures.items() if isinstance(v, float)})
    ctx.progress(1.0, "evaluated")
    return figures


def evaluate_job_policy(ctx: RunContext, policy: ModelVersion, reward_name: str | None, *, max_new_tokens: int = 64) -> dict | None:
    """A policy job's evaluation: against its parent, under the job's reward model or else the campaign's latest (if any).

    Returns the figures without the examples (for the run's result; the policy's metadata keeps them).
    A failed evaluation (out of memory, say) is logged and leaves the trained policy registered: None.
    """
    campaign, previous = ctx.campaign, policy.parent
    assert previous is not None  # a job's policy is registered with its parent
    reward = ModelVersion.objects.get(name=reward_name) if reward_name else latest_reward_model(campaign)
    if reward is None:
        ctx.log("evaluation without reward figures: the campaign has no reward model yet")
    try:
        figures = evaluate_against_previous(_Finishing(ctx.run), campaign, policy, previous, reward, max_new_tokens=max_new_tokens,
                                            metric_prefix="evaluation/")
    except Exception as exc:  # the policy is trained and registered: the figures are a report on it, not a condition of it
        ctx.log(f"evaluation failed, {policy.name} is registered without it: {type(exc).__name__}: {exc}")
        return None
    if figures is None:
        return None
    return {**{k: v for k, v in figures.items() if k != "examples"}, "reward_model": reward.name if reward else None}


class _Finishing(RunContext):
    """A job's context once training is done: the bar stays near full while the evaluation runs."""

    def progress(self, fraction: float, message: str = "") -> None:
        super().progress(0.99, f"evaluation: {message}")


def _with_prompts(examples: list[dict], prompts: list) -> list[dict]:
    """Each example with its prompt's external id and last user turn, to show beside the answers."""
    return [{**example, "prompt_id": prompt.external_id, "prompt": _last_user_turn(prompt.messages)}
            for example, prompt in zip(examples, prompts)]


def _last_user_turn(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
