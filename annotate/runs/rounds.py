"""The closed loop: one RLHF round as one run (kind `round`).

1. Train a reward model on all judgements so far (but those of the evaluation prompts).
2. Optimise the current policy against it (PPO by default) → the next round's policy.
3. Evaluate the new policy against the previous one on the campaign's evaluation prompts
   (`annotate.runs.evaluation`; nothing trains on them).
4. Generate from the new policy into head-to-head tasks against the previous policy: on any k,
   ⌈k/2⌉ new and ⌊k/2⌋ previous responses to one prompt per task, positions shuffled; prompts the
   previous policy never answered get its responses generated in the same run.

Every phase's params are checked before the run is queued (against stand-ins for the models the
round will make); if a later phase fails, the models the round registered are removed again.
The round's figures (reward model accuracy, held-out evaluation, reward and KL, and, once labelers
have judged, the human win rate of round N against round N-1) come from `round_report`.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from django.db import transaction

from annotate.jobs.engine import InvalidParams, RunContext, RunFailed, register
from annotate.models import Campaign, Judgement, ModelVersion, Response, Task
from annotate.runs.endpoints import is_endpoint, serve_through
from annotate.runs.evaluation import evaluate_against_previous
from annotate.runs.generation import generate_into_queue
from annotate.runs.generation import validate_params as validate_generation
from annotate.runs.ppo import optimise_with_ppo
from annotate.runs.registry import RegistryError, current_policy, current_policy_name
from annotate.runs.reward import train_and_register
from annotate.runs.reward import validate_params as validate_reward
from annotate.runs.round_report import round_reports

METHODS = ("ppo", "dpo", "rloo")
# Progress: the three phases share the bar in these proportions.
PHASES = {"reward": (0.0, 0.3), "policy": (0.3, 0.8), "evaluate": (0.8, 0.85), "generate": (0.85, 1.0)}
# Phase defaults under the round's own params (which still win). `cpu`: what a 2-core CPU machine can
# afford for a demo or a CI-sized check; `gpu`: each phase's own (GPU-sized) defaults. `auto` (a round
# without a preset) takes `cpu` on a worker with no CUDA device and `gpu` on one with, chosen when the
# round starts; the run's params then name the preset that ran.
PRESETS: dict[str, dict[str, dict]] = {
    "gpu": {"reward": {}, "ppo": {}, "dpo": {}, "rloo": {}, "generate": {}},
    "cpu": {
        "reward": {"epochs": 1.0, "batch_size": 8, "max_length": 384},
        "ppo": {"iterations": 6, "rollout_batch_size": 8, "minibatch_size": 8, "ppo_epochs": 2, "max_new_tokens": 32,
                "max_prompt_tokens": 256},
        "dpo": {"max_steps": 20, "batch_size": 4},
        "rloo": {"max_steps": 10, "batch_size": 4, "num_generations": 2, "max_completion_length": 32},
        "generate": {"max_new_tokens": 48, "batch_size": 16},
    },
}


class PhaseContext(RunContext):
    """A RunContext for one phase: progress scaled into the phase's part of the bar, metrics prefixed."""

    def __init__(self, ctx: RunContext, phase: str):  # no super().__init__: all but progress and metrics go to `ctx`
        self._ctx, self._phase = ctx, phase
        self._low, self._high = PHASES[phase]
        self.run, self.params = ctx.run, ctx.params
        self.started = time.monotonic()

    def done(self, seconds: dict) -> None:
        """Record how long the phase took (the round's result and log, and a `time/<phase>_s` metric)."""
        seconds[self._phase] = round(time.monotonic() - self.started, 1)
        self._ctx.log(f"{self._phase} phase: {seconds[self._phase]} s")
        self._ctx.metrics(0, {f"time/{self._phase}_s": seconds[self._phase]})

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
    if unknown := sorted(set(params) - {"method", "reward", "policy", "generate", "preset", "served_by"}):
        raise InvalidParams(f"unknown params {unknown}; allowed: method, reward, policy, generate, preset, served_by.", field=unknown[0])
    method = params.get("method", "ppo")
    if method not in METHODS:
        raise InvalidParams(f"method must be one of {list(METHODS)}.", field="method")
    preset = params.get("preset", "auto")
    if preset != "auto" and preset not in PRESETS:
        raise InvalidParams(f"preset must be one of {['auto', *sorted(PRESETS)]} (absent: auto).", field="preset")
    for part in ("reward", "policy", "generate"):
        if not isinstance(params.get(part, {}), dict):
            raise InvalidParams(f"{part} must be an object of that phase's params.", field=part)
    if preset == "auto":  # the worker that runs it chooses (resolve_preset): refuse now what either choice would refuse
        for choice in ("cpu", "gpu"):
            validate_params(campaign, {**params, "preset": choice})
        return {"method": method, "preset": "auto", **{part: params.get(part, {}) for part in ("reward", "policy", "generate")},
                **({"served_by": params["served_by"]} if params.get("served_by") else {})}
    params = with_preset(params, preset, method)
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
    check_later_phases(campaign, method, policy, generate)
    return {"method": method, "preset": preset, "reward": reward, "policy": policy, "generate": generate,
            **({"served_by": served_by} if served_by else {})}


def with_preset(params: dict, preset: str, method: str) -> dict:
    """The params with the preset's defaults under each phase's own."""
    defaults = PRESETS[preset]
    return {**params, "reward": {**defaults["reward"], **params.get("reward", {})},
            "policy": {**defaults[method], **params.get("policy", {})}, "generate": {**defaults["generate"], **params.get("generate", {})}}


def check_later_phases(campaign: Campaign, method: str, policy: dict, generate: dict) -> None:
    """Run the policy and generation phases' own checks now, so a bad param is refused before anything trains.

    The reward model and policy the round will make do not exist yet: stand-ins take their places
    in a savepoint that is always rolled back. InvalidParams names the phase (`policy.lr`).
    """
    tag = uuid.uuid4().hex[:12]
    with transaction.atomic():
        reward = ModelVersion.objects.create(name=f"round-check-reward-{tag}", kind=ModelVersion.Kind.REWARD, checkpoint_path="stand-in")
        new = ModelVersion.objects.create(name=f"round-check-policy-{tag}", kind=ModelVersion.Kind.POLICY, checkpoint_path="stand-in")
        try:
            _check("policy", lambda: _policy_validator(method)(campaign, {**policy, **_policy_overrides(method, current_policy_name(campaign), reward.name)}))
            _check("generate", lambda: validate_generation(campaign, {**generate, "models": [new.name], "head_to_head_with": current_policy_name(campaign)}))
        finally:
            transaction.set_rollback(True)


def _check(phase: str, validate) -> None:
    try:
        validate()
    except InvalidParams as exc:
        raise InvalidParams(f"{phase}: {exc.message}", field=f"{phase}.{exc.field}" if exc.field else phase) from exc


def _policy_validator(method: str):
    if method == "ppo":
        from annotate.runs.ppo import validate_ppo

        return validate_ppo
    from annotate.runs.sft_dpo_rloo import validate_params as validate_alternative

    return validate_alternative(method)


def _policy_overrides(method: str, previous: str, reward: str) -> dict:
    """The params a round chooses for its policy phase: the previous policy, and its reward model where the method uses one."""
    return {"policy": previous, **({"reward_model": reward} if method in ("ppo", "rloo") else {})}


def resolve_preset(ctx: RunContext) -> None:
    """Turn `preset: auto` into the preset for this worker (cpu without a CUDA device, else gpu), in the run's params too."""
    if ctx.params["preset"] != "auto":
        return
    from training.models import default_device

    choice = "gpu" if default_device().type == "cuda" else "cpu"
    ctx.params = ctx.run.params = validate_params(ctx.campaign, {**ctx.params, "preset": choice})
    ctx.run.save(update_fields=["params"])
    ctx.log(f"preset auto: {choice} on this worker")


def run_round(ctx: RunContext) -> dict:
    resolve_preset(ctx)
    campaign, method = ctx.campaign, ctx.params["method"]
    previous = current_policy(campaign)
    ctx.log(f"round from {previous.name} (round {previous.round or 0}), policy optimisation: {method}")
    made: list[ModelVersion] = []
    seconds: dict[str, float] = {}
    try:
        phase = PhaseContext(ctx, "reward")
        reward, _ = train_and_register(phase, ctx.params["reward"])
        made.append(reward)
        phase.done(seconds)
        ctx.check_cancelled()
        phase = PhaseContext(ctx, "policy")
        policy = optimise_policy(method, phase, campaign, previous, reward)
        made.append(policy)
        phase.done(seconds)
        ctx.check_cancelled()
        if ctx.params.get("served_by"):
            try:
                policy = serve_through(policy, ctx.params["served_by"])
            except RegistryError as exc:
                raise RunFailed(str(exc)) from exc
            ctx.log(f"{policy.name} is served by {ctx.params['served_by']}: generating through it")
        phase = PhaseContext(ctx, "evaluate")
        evaluation = evaluate_against_previous(phase, campaign, policy, previous, reward, max_new_tokens=ctx.params["generate"].get("max_new_tokens", 64))
        phase.done(seconds)
        ctx.check_cancelled()
        generation_params = validate_generation(campaign, {**ctx.params["generate"], "models": [policy.name], "head_to_head_with": previous.name})
        phase = PhaseContext(ctx, "generate")
        generated = generate_into_queue(phase, generation_params)
        phase.done(seconds)
    except BaseException:
        unregister(ctx, made)
        raise
    return {"round": policy.round, "preset": ctx.params["preset"], "previous_policy": previous.name, "policy": policy.name, "reward_model": reward.name,
            "reward_accuracy": reward.metadata["metrics"]["eval/accuracy"], "final_metrics": policy.metadata.get("final_metrics", {}),
            "evaluation": evaluation, "seconds": seconds, **generated}


def optimise_policy(method: str, ctx, campaign: Campaign, previous: ModelVersion, reward: ModelVersion) -> ModelVersion:
    params = _policy_validator(method)(campaign, {**ctx.params["policy"], **_policy_overrides(method, previous.name, reward.name)})
    if method == "ppo":
        return optimise_with_ppo(ctx, params)[0]
    from annotate.runs.sft_dpo_rloo import train_and_register_policy

    return train_and_register_policy(method, ctx, params)


@transaction.atomic
def unregister(ctx: RunContext, made: list[ModelVersion]) -> None:
    """Take the models a failed round registered out of the registry again, with the unjudged tasks of their responses.

    Their checkpoints stay on disk under the run's artifacts, for diagnosis.
    """
    for version in reversed(made):
        responses = Response.objects.filter(model_version=version)
        if Judgement.objects.filter(task__responses__in=responses).exists():
            ctx.log(f"kept {version.name}: labelers have already judged its responses")
            continue
        Task.objects.filter(responses__in=responses).delete()
        responses.delete()
        version.delete()
        ctx.log(f"the round failed: {version.name} removed from the registry")


def round_summaries(campaign: Campaign) -> list[dict]:
    """The round report (`round_reports`) with, per round, its method and the reward and KL at the end of its optimisation."""
    finals = dict(
        ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY, metadata__campaign=campaign.slug).values_list("name", "metadata")
    )
    rows = []
    for report in round_reports(campaign):
        metadata = finals[report["policy"]]
        final, win = metadata.get("final_metrics", {}), report["human_win_rate"]
        rows.append({**report, "parent": report["previous_policy"], "method": metadata.get("method"), "reward": final.get("objective/scores"),
                     "kl": final.get("objective/kl"), "win_rate": win["value"], "judgements": win["judgements"]})
    return rows


register("round", validate_params, run_round)
