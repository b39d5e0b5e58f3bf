"""Policy optimisation jobs: PPO (ours, `training.ppo`) against the campaign's reward model.

With `num_processes` > 1 it trains data-parallel through `accelerate launch` (`launching.train_launched`,
`python -m training.ppo`); DeepSpeed stays refused (see `no_deepspeed`).

A run registers a new policy ModelVersion (merged checkpoint; the LoRA adapter beside it) with
its lineage: parent policy, the run, round = parent's round + 1. A cancelled run keeps its last
checkpoint on disk (resume it with `resume_run`) and registers nothing; a NaN loss fails the run
with a diagnosis and registers nothing.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from django.conf import settings

from annotate.exports.training_data import evaluation_prompts, prompt_chats, training_prompts
from annotate.jobs.engine import InvalidParams, RunCancelled, RunContext, RunFailed, register
from annotate.jobs.params import integer, number
from annotate.models import Campaign, ModelVersion, Run
from annotate.runs import registry
from annotate.runs.evaluation import evaluate_job_policy
from annotate.runs.launching import launch_params, launches, train_launched
from annotate.runs.registry import current_policy, latest_reward_model, policy_name, register_policy

PPO_FIELDS = {"policy", "reward_model", "name", "iterations", "rollout_batch_size", "minibatch_size", "ppo_epochs", "kl_coef",
              "target_kl", "learning_rate", "temperature", "max_new_tokens", "max_prompt_tokens", "seed", "limit", "resume_run"}


def validate_ppo(campaign: Campaign | None, params: dict) -> dict:
    if campaign is None:
        raise InvalidParams("a PPO run belongs to a campaign.", field="campaign")
    params, processes = no_deepspeed(params), launch_params(params)
    params = {k: v for k, v in params.items() if k != "num_processes"}
    if unknown := sorted(set(params) - PPO_FIELDS):
        raise InvalidParams(f"unknown params {unknown}; allowed: {sorted(PPO_FIELDS)}.", field=unknown[0])
    policy = params.get("policy")
    if policy is not None and (error := registry.training_base_error(policy)):
        raise InvalidParams(f"policy {error}", field="policy")
    if policy is not None:
        registry.generating_model_param(campaign, policy, "policy")
    reward = params.get("reward_model") or getattr(latest_reward_model(campaign), "name", None)
    if reward is None:
        raise InvalidParams("no reward model yet: train one on this campaign's judgements first.", field="reward_model")
    registry.reward_model_param(campaign, reward)
    resume = params.get("resume_run")
    if resume is not None and not Run.objects.filter(pk=resume, kind="ppo", campaign=campaign).exists():
        raise InvalidParams(f"run {resume!r} is not a PPO run of this campaign.", field="resume_run")
    clean = {
        "policy": policy, "reward_model": reward, "name": policy_name(campaign, params), "resume_run": resume,
        "iterations": integer(params, "iterations", 20, 1, 100_000),
        "rollout_batch_size": integer(params, "rollout_batch_size", 8, 1, 4096),
        "minibatch_size": integer(params, "minibatch_size", 4, 1, 4096),
        "ppo_epochs": integer(params, "ppo_epochs", 4, 1, 16),
        "max_new_tokens": integer(params, "max_new_tokens", 48, 1, 2048),
        "max_prompt_tokens": integer(params, "max_prompt_tokens", None, 8, 32_768),
        "seed": integer(params, "seed", 0, 0, 2**31 - 1),
        "limit": integer(params, "limit", None, 1, 1_000_000),
        "kl_coef": number(params, "kl_coef", 0.05, low=0.0, high=10.0),
        "learning_rate": number(params, "learning_rate", 3e-5, low=0.0, high=1.0, low_open=True),
        "temperature": number(params, "temperature", 0.7, low=0.0, high=2.0, low_open=True),
    }
    clean["target_kl"] = None if params.get("target_kl") is None else number(params, "target_kl", None, low=0.0, high=100.0, low_open=True)
    if clean["rollout_batch_size"] % clean["minibatch_size"]:
        raise InvalidParams("rollout_batch_size must be a multiple of minibatch_size.", field="minibatch_size")
    return {**clean, **processes}


def no_deepspeed(params: dict) -> dict:
    """PPO is data-parallel only: every rank holds the whole policy and critic. DeepSpeed is refused, and why."""
    if params.get("deepspeed") is not None:
        raise InvalidParams("deepspeed is not available for PPO: training.ppo is our own loop with two models (the policy, whose "
                            "adapter-free weights are also the reference, and the critic), and it generates with the whole policy "
                            "on every rank, which ZeRO's sharded weights do not allow; PPO runs data-parallel (num_processes), "
                            "and for a model that does not fit one GPU use RLOO (kind rloo) with deepspeed.", field="deepspeed")
    return {k: v for k, v in params.items() if k != "deepspeed"}


def run_ppo(ctx: RunContext) -> dict:
    version, result = optimise_with_ppo(ctx, ctx.params)
    # a round evaluates its policy itself; a job evaluates here, on the held-out split, against the parent
    evaluation = evaluate_job_policy(ctx, version, ctx.params["reward_model"], max_new_tokens=ctx.params["max_new_tokens"])
    return {"model": version.name, "model_id": version.pk, "round": version.round, "iterations": result.iterations,
            "final_metrics": version.metadata["final_metrics"], "evaluation": evaluation}


def optimise_with_ppo(ctx: RunContext, p: dict):
    """PPO from the parent policy against the reward model; registers the new policy. Returns (ModelVersion, PPOResult)."""
    from training.ppo import PPOConfig, reward_fn_from_checkpoint, train_ppo

    run, campaign = ctx.run, ctx.campaign
    parent = ModelVersion.objects.get(name=p["policy"]) if p["policy"] else current_policy(campaign)
    reward = ModelVersion.objects.get(name=p["reward_model"])
    prompts = prompt_chats(training_prompts(campaign)[: p["limit"]])
    if not prompts:
        raise RunFailed("the campaign has no prompts to train on.")
    out = Path(settings.ARTIFACTS_DIR) / "runs" / str(p["resume_run"] or run.pk) / "ppo"
    reward_path = str(registry.checkpoint_dir(reward))
    config = PPOConfig(
        policy_path=str(registry.checkpoint_dir(parent)), output_dir=str(out), reward_model_path=reward_path,
        total_iterations=p["iterations"], rollout_batch_size=p["rollout_batch_size"], minibatch_size=p["minibatch_size"],
        ppo_epochs=p["ppo_epochs"], kl_coef=p["kl_coef"], target_kl=p["target_kl"], learning_rate=p["learning_rate"],
        temperature=p["temperature"], max_new_tokens=p["max_new_tokens"], seed=p["seed"], max_prompt_tokens=p.get("max_prompt_tokens"),
    )
    _refuse_if_it_cannot_fit(config, prompts)
    ctx.log(f"PPO: {parent.name} against {reward.name} on {len(prompts)} prompts, {p['iterations']} iterations")
    ctx.artifact("checkpoints", out)

    def on_log(iteration: int, metrics: dict) -> None:
        ctx.metrics(iteration, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        ctx.progress((iteration + 1) / p["iterations"], f"iteration {iteration + 1} of {p['iterations']}")
        if any(isinstance(v, float) and math.isnan(v) for v in metrics.values()):
            raise RunFailed(f"NaN in the metrics at iteration {iteration} ({sorted(k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v))}): "
                            "lower the learning rate or check the reward model's scores.")

    held_out = prompt_chats(evaluation_prompts(campaign)) or None  # the reward offset is measured where nothing trains
    if launches(p):
        result = _launched(ctx, config, prompts, held_out, reward_path, p, on_log)
    else:
        result = train_ppo(config, prompts, reward_fn_from_checkpoint(reward_path), on_log=on_log, should_stop=ctx.should_stop,
                           reference_prompts=held_out)
    if result.alarm is not None:
        raise RunFailed(f"PPO stopped by its alarms after {result.iterations} iterations: {result.alarm}")
    if result.stopped:
        ctx.log(f"stopped after {result.iterations} iterations; the checkpoint in {out} can be resumed (resume_run={p['resume_run'] or run.pk})")
        raise RunCancelled()
    last = result.history[-1] if result.history else {}
    version = register_policy(campaign, run, parent, result.policy_dir, p["name"], method="ppo",
                              extra={"reward_model": reward.name, "adapter_dir": str(result.adapter_dir), "final_metrics": last,
                                     "snapshot": reward.metadata.get("snapshot")})  # the judgements behind its reward model
    return version, result


def _launched(ctx: RunContext, config, prompts: list, held_out: list | None, reward_path: str, p: dict, on_log):
    """PPO on the run's processes through `accelerate launch`; the PPOResult rank 0 left. Each rank takes
    rollout_batch_size prompts an iteration, so an iteration holds num_processes times as many episodes."""
    from training.ppo import load_result
    from training.preferences import write_jsonl

    data_dir = Path(config.output_dir).parent / "data"
    data: dict[str, Path | str] = {"prompts": write_jsonl([{"messages": m} for m in prompts], data_dir / "prompts.jsonl"), "reward_model": reward_path}
    if held_out:
        data["reference_prompts"] = write_jsonl([{"messages": m} for m in held_out], data_dir / "reference_prompts.jsonl")
    return train_launched(ctx, "training.ppo", config, data, p, on_log, load_result)


def _refuse_if_it_cannot_fit(config, prompts: list) -> None:
    """Fail now, with the estimate and the memory here, rather than out of memory an hour in (checked on the worker)."""
    from training.memory import ppo_estimate, refusal
    from training.models import default_device

    longest_prompt = max(len(json.dumps(messages)) for messages in prompts) // 2  # tokens, generously: ~2 characters each
    estimate = ppo_estimate(config.policy_path, minibatch_size=config.minibatch_size, lora_r=config.lora_r,
                            sequence_length=longest_prompt + config.max_new_tokens)
    if reason := refusal(estimate, str(config.device or default_device())):
        raise RunFailed(reason)


register("ppo", validate_ppo, run_ppo)
