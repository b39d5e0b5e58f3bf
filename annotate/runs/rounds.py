"""The closed loop: one RLHF round as one run (kind `round`).

1. Train a reward model on all judgements so far.
2. Optimise the current policy against it (PPO by default) → the next round's policy.
3. Generate from the new policy, each response paired head to head with the previous policy's
   response to the same prompt, straight into the labeling queue.
The round's figures (reward, KL, and, once labelers have judged, the human win rate of round N
against round N-1) come from `round_summaries`.
"""
from __future__ import annotations

from pathlib import Path

from annotate.jobs.engine import InvalidParams, RunContext, RunFailed, register
from annotate.models import Campaign, Judgement, ModelVersion, Response
from annotate.runs.endpoints import is_endpoint, serve_through
from annotate.runs.generation import generate_into_queue
from annotate.runs.generation import validate_params as validate_generation
from annotate.runs.ppo import optimise_with_ppo
from annotate.runs.registry import RegistryError, current_policy
from annotate.runs.reward import train_and_register
from annotate.runs.reward import validate_params as validate_reward

METHODS = ("ppo", "dpo", "rloo")
# Progress: the three phases share the bar in these proportions.
PHASES = {"reward": (0.0, 0.3), "policy": (0.3, 0.85), "generate": (0.85, 1.0)}


class PhaseContext(RunContext):
    """A RunContext for one phase: progress scaled into the phase's part of the bar, metrics prefixed."""

    def __init__(self, ctx: RunContext, phase: str):  # no super().__init__: all but progress and metrics go to `ctx`
        self._ctx, self._phase = ctx, phase
        self._low, self._high = PHASES[phase]
        self.run, self.params = ctx.run, ctx.params

    def progress(self, fraction: float, message: str = "") -> None:
        self._ctx.progress(self._low + (self._high - self._low) * fraction, f"{self._phase}: {message}")

    def metrics(self, step: int, values: dict) -> None:
        self._ctx.metrics(step, {f"{self._phase}/{k}": v for k, v in values.items()})

    def log(self, line: str) -> None:
        self._ctx.log(line)

    def artifact(self, name: str, path: str | Path) -> None:
        self._ctx.artifact(name, path)

    def should_stop(self) -> bool:
        return self._ctx.should_stop()

    def check_cancelled(self) -> None:
        self._ctx.check_cancelled()


def validate_params(campaign: Campaign | None, params: dict) -> dict:
    if campaign is None:
        raise InvalidParams("a round belongs to a campaign.", field="campaign")
    if unknown := sorted(set(params) - {"method", "reward", "policy", "generate", "served_by"}):
        raise InvalidParams(f"unknown params {unknown}; allowed: method, reward, policy, generate, served_by.", field=unknown[0])
    method = params.get("method", "ppo")
    if method not in METHODS:
        raise InvalidParams(f"method must be one of {list(METHODS)}.", field="method")
    for part in ("reward", "policy", "generate"):
        if not isinstance(params.get(part, {}), dict):
            raise InvalidParams(f"{part} must be an object of that phase's params.", field=part)
    reward = validate_reward(campaign, params.get("reward", {}))
    policy = dict(params.get("policy", {}))
    for key in ("reward_model", "policy", "name", "resume_run"):
        if key in policy:
            raise InvalidParams(f"policy.{key} is chosen by the round itself.", field="policy")
    generate = dict(params.get("generate", {}))
    if "models" in generate or "head_to_head_with" in generate:
        raise InvalidParams("generate.models and generate.head_to_head_with are chosen by the round itself.", field="generate")
    served_by = params.get("served_by")  # an endpoint whose vLLM server loads the new adapter and generates for the round
    if served_by is not None and not (isinstance(served_by, str) and is_endpoint(served_by)):
        raise InvalidParams(f"served_by {served_by!r} is not a registered endpoint.", field="served_by")
    return {"method": method, "reward": reward, "policy": policy, "generate": generate, **({"served_by": served_by} if served_by else {})}


def run_round(ctx: RunContext) -> dict:
    campaign, method = ctx.campaign, ctx.params["method"]
    previous = current_policy(campaign)
    ctx.log(f"round from {previous.name} (round {previous.round or 0}), policy optimisation: {method}")
    reward, _ = train_and_register(PhaseContext(ctx, "reward"), ctx.params["reward"])
    ctx.check_cancelled()
    policy = optimise_policy(method, PhaseContext(ctx, "policy"), campaign, previous, reward)
    ctx.check_cancelled()
    if ctx.params.get("served_by"):
        try:
            policy = serve_through(policy, ctx.params["served_by"])
        except RegistryError as exc:
            raise RunFailed(str(exc)) from exc
        ctx.log(f"{policy.name} is served by {ctx.params['served_by']}: generating through it")
    baseline = previous.name if Response.objects.filter(prompt__campaign=campaign, model_version=previous).exists() else None
    generation_params = validate_generation(campaign, {**ctx.params["generate"], "models": [policy.name], "head_to_head_with": baseline})
    generated = generate_into_queue(PhaseContext(ctx, "generate"), generation_params)
    return {"round": policy.round, "previous_policy": previous.name, "policy": policy.name, "reward_model": reward.name,
            "reward_accuracy": reward.metadata["metrics"]["eval/accuracy"], "final_metrics": policy.metadata.get("final_metrics", {}),
            **generated}


def optimise_policy(method: str, ctx, campaign: Campaign, previous: ModelVersion, reward: ModelVersion) -> ModelVersion:
    overrides = {"policy": previous.name}
    if method == "ppo":
        from annotate.runs.ppo import validate_ppo

        return optimise_with_ppo(ctx, validate_ppo(campaign, {**ctx.params["policy"], **overrides, "reward_model": reward.name}))[0]
    from annotate.runs.sft_dpo_rloo import train_and_register_policy
    from annotate.runs.sft_dpo_rloo import validate_params as validate_alternative

    if method == "rloo":
        overrides["reward_model"] = reward.name
    return train_and_register_policy(method, ctx, validate_alternative(method)(campaign, {**ctx.params["policy"], **overrides}))


def human_win_rate(new: ModelVersion, old: ModelVersion) -> tuple[float | None, int]:
    """How often labelers ranked `new`'s response above `old`'s on head-to-head tasks (ties half); (rate, judgements)."""
    model_of: dict[int, int] = {}  # response id -> model version id
    # two filter() calls: the task has a response of each model (not one response of both)
    judgements = (
        Judgement.objects.filter(task__responses__model_version=new, task__is_gold=False)
        .filter(task__responses__model_version=old)
        .distinct()
        .values_list("ranking", flat=True)
    )
    wins = total = 0.0
    for ranking in judgements:
        ids = [rid for group in ranking for rid in group]
        missing = [rid for rid in ids if rid not in model_of]
        model_of.update(Response.objects.filter(pk__in=missing).values_list("id", "model_version_id"))
        place = {model_of[rid]: i for i, group in enumerate(ranking) for rid in group}
        if new.pk in place and old.pk in place:
            total += 1
            wins += 1.0 if place[new.pk] < place[old.pk] else 0.5 if place[new.pk] == place[old.pk] else 0.0
    return (wins / total if total else None), int(total)


def round_summaries(campaign: Campaign) -> list[dict]:
    """One row per round's policy: reward and KL at the end of its optimisation, human win rate against its parent."""
    rows = []
    policies = ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, metadata__campaign=campaign.slug).select_related("parent").order_by("round", "created_at")
    for policy in policies:
        final = policy.metadata.get("final_metrics", {})
        rate, n = human_win_rate(policy, policy.parent) if policy.parent else (None, 0)
        rows.append({"round": policy.round, "policy": policy.name, "parent": getattr(policy.parent, "name", None),
                     "method": policy.metadata.get("method"), "reward": final.get("objective/scores"), "kl": final.get("objective/kl"),
                     "win_rate": rate, "judgements": n})
    return rows


register("round", validate_params, run_round)
