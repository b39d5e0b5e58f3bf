"""SFT, DPO and RLOO jobs (TRL 1.16 through `training.sft/dpo/rloo`), the same plumbing as PPO.

- `sft`: supervised fine-tuning on the labelers' winning responses (each prompt's ranking winners).
- `dpo`: DPO straight from the preference pairs (no reward model needed).
- `rloo`: RLOO with the campaign's reward model as the reward function.
On several processes (`num_processes`, by default the worker's GPU count) or with `deepspeed`, the job runs
the same training through `accelerate launch` (annotate.runs.launching). Each registers the merged policy as a new ModelVersion (round = parent's + 1) with its adapter
path and the snapshot it learnt from in metadata (SFT and DPO train on a snapshot of the
judgements, RLOO records its reward model's). A cancel registers nothing.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotate.exports.training_data import (
    prompt_chats,
    snapshot_judgements,
    snapshot_param,
    snapshot_record,
    training_prompts,
    training_snapshot,
)
from annotate.jobs.engine import InvalidParams, RunCancelled, RunContext, RunFailed, register
from annotate.jobs.params import flag, integer, number
from annotate.models import Campaign, ModelVersion
from annotate.runs import registry
from annotate.runs.evaluation import evaluate_job_policy
from annotate.runs.fit import quantize_param, refuse_if_it_cannot_fit_here
from annotate.runs.launching import launch_params, launches, train_launched
from annotate.runs.registry import current_policy, latest_reward_model, policy_name, register_policy

COMMON = {"policy", "name", "learning_rate", "epochs", "max_steps", "batch_size", "use_lora", "seed", "limit",
          "gradient_checkpointing", "bf16", "quantize", "num_processes", "deepspeed"}
EXTRA = {"sft": {"snapshot"}, "dpo": {"beta", "snapshot"}, "rloo": {"reward_model", "beta", "num_generations", "max_completion_length"}}
DEFAULT_LR = {"sft": 2e-4, "dpo": 5e-5, "rloo": 3e-5}


def validate_params(kind: str):
    def validate(campaign: Campaign | None, params: dict) -> dict:
        if campaign is None:
            raise InvalidParams("this run belongs to a campaign.", field="campaign")
        allowed = COMMON | EXTRA[kind]
        if unknown := sorted(set(params) - allowed):
            raise InvalidParams(f"unknown params {unknown}; allowed: {sorted(allowed)}.", field=unknown[0])
        policy = params.get("policy")
        if policy is not None and (error := registry.training_base_error(policy)):
            raise InvalidParams(f"policy {error}", field="policy")
        if policy is not None:
            registry.generating_model_param(campaign, policy, "policy")
        clean = {
            "policy": policy, "name": policy_name(campaign, params),
            "learning_rate": number(params, "learning_rate", DEFAULT_LR[kind], low=0.0, high=1.0, low_open=True),
            "epochs": number(params, "epochs", 1.0, low=0.0, high=100.0, low_open=True),
            "max_steps": integer(params, "max_steps", -1, -1, 1_000_000),
            "batch_size": integer(params, "batch_size", 8, 1, 1024),
            "use_lora": flag(params, "use_lora", True),
            "seed": integer(params, "seed", 0, 0, 2**31 - 1),
            "limit": integer(params, "limit", None, 1, 1_000_000),
            # large models: recompute activations in the backward pass; bf16 (None: on where the GPU supports it)
            "gradient_checkpointing": flag(params, "gradient_checkpointing", False),
            "bf16": None if params.get("bf16") is None else flag(params, "bf16", False),
        }
        if quantize := quantize_param(params, use_lora=clean["use_lora"]):  # QLoRA: the base in 4/8 bits (annotate.runs.fit)
            clean["quantize"] = quantize
        if kind in ("sft", "dpo"):
            clean["snapshot"] = snapshot_param(campaign, params)
        if kind in ("dpo", "rloo"):
            clean["beta"] = number(params, "beta", 0.1 if kind == "dpo" else 0.05, low=0.0, high=10.0)
        if kind == "rloo":
            reward = params.get("reward_model") or getattr(latest_reward_model(campaign), "name", None)
            if reward is None or registry.campaign_model(campaign, reward, "reward_model", ModelVersion.Kind.REWARD) is None:
                raise InvalidParams("RLOO needs a registered reward model: train one on this campaign first.", field="reward_model")
            clean["reward_model"] = reward
            clean["num_generations"] = integer(params, "num_generations", 4, 2, 64)
            clean["max_completion_length"] = integer(params, "max_completion_length", 128, 1, 4096)
        return {**clean, **launch_params(params)}  # num_processes, deepspeed

    return validate


def _preference_rows(ctx: RunContext, kind: str, p: dict):
    """(the preference dataset, the snapshot it came from, as recorded in the model's metadata)."""
    from training.preferences import PreferenceDatasetError, PreferenceOptions, build_preference_dataset

    snapshot = training_snapshot(ctx.run, kind, p.get("snapshot"))
    ctx.log(f"training data: snapshot {snapshot.name} v{snapshot.version} ({snapshot.content_hash[:12]})")
    try:
        return build_preference_dataset(snapshot_judgements(snapshot), PreferenceOptions(seed=p["seed"])), snapshot_record(snapshot)
    except PreferenceDatasetError as exc:
        raise RunFailed(f"not enough preference data: {exc}") from exc


def _common_config(p: dict, parent: ModelVersion, out: Path) -> dict:
    import torch

    if p.get("bf16") and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        # decided on the worker, which owns the hardware (the web process may have no GPU either way)
        raise RunFailed("bf16 needs a GPU that supports it, and this worker has none: run without bf16, or on the gpu queue.")
    return {"base_model": str(registry.checkpoint_dir(parent)), "output_dir": str(out), "use_lora": p["use_lora"],
            "learning_rate": p["learning_rate"], "num_train_epochs": p["epochs"], "max_steps": p["max_steps"],
            "per_device_train_batch_size": p["batch_size"], "seed": p["seed"], "use_cpu": not torch.cuda.is_available(), "logging_steps": 1,
            "gradient_checkpointing": p.get("gradient_checkpointing", False), "bf16": p.get("bf16"),
            "quantize": p.get("quantize")}


def _streaming(ctx: RunContext, epochs: float):
    def on_log(step: int, metrics: dict) -> None:
        ctx.metrics(step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        ctx.progress(min(metrics.get("epoch", 0) / max(epochs, 1e-9), 0.99), f"step {step}")

    return on_log


def run_policy_training(kind: str):
    def handle(ctx: RunContext) -> dict:
        version = train_and_register_policy(kind, ctx, ctx.params)
        # RLOO is evaluated under its own reward model, SFT and DPO under the campaign's latest (if it has one)
        max_new_tokens = ctx.params.get("max_completion_length", 64)
        evaluation = evaluate_job_policy(ctx, version, ctx.params.get("reward_model"), max_new_tokens=max_new_tokens)
        return {"model": version.name, "model_id": version.pk, "round": version.round, "metrics": version.metadata["final_metrics"],
                "evaluation": evaluation}

    return handle


def train_and_register_policy(kind: str, ctx: RunContext, p: dict) -> ModelVersion:
    """Train with SFT, DPO or RLOO from the parent policy and register the result."""
    from training.policy_io import PolicyTrainingError
    from training.trl_common import TrainingCancelled

    campaign = ctx.campaign
    parent = ModelVersion.objects.get(name=p["policy"]) if p["policy"] else current_policy(campaign)
    refuse_if_it_cannot_fit_here(kind, campaign, {**p, "policy": parent.name})  # fail now, not out of memory an hour in
    out = Path(settings.ARTIFACTS_DIR) / "runs" / str(ctx.run.pk) / kind
    try:
        result, snapshot = _train(kind, ctx, p, campaign, _common_config(p, parent, out))
    except TrainingCancelled as exc:
        raise RunCancelled() from exc
    except PolicyTrainingError as exc:
        raise RunFailed(str(exc)) from exc
    return register_policy(campaign, ctx.run, parent, result.merged_dir, p["name"], method=kind,
                           extra={"adapter_dir": str(result.adapter_dir) if result.adapter_dir else None, "final_metrics": result.metrics,
                                  "snapshot": snapshot, **({"reward_model": p["reward_model"]} if kind == "rloo" else {})})


def _train(kind: str, ctx: RunContext, p: dict, campaign: Campaign, config: dict):
    """(the training result, the snapshot the policy learnt from: its own, or for RLOO its reward model's)."""
    from training import dpo, rloo, sft
    from training.preferences import write_jsonl

    on_log, data_dir = _streaming(ctx, p["epochs"]), Path(config["output_dir"]).parent / "data"
    if kind == "sft":
        data, snapshot = _preference_rows(ctx, kind, p)
        sft_config, rows = sft.SFTConfig(**config), sft.chosen_to_sft_rows(data.train)
        if launches(p):
            return _launched(ctx, "training.sft", sft_config, {"rows": write_jsonl(rows, data_dir / "sft.jsonl")}, p, on_log), snapshot
        return sft.train_sft(sft_config, rows, on_log=on_log, should_stop=ctx.should_stop), snapshot
    if kind == "dpo":
        data, snapshot = _preference_rows(ctx, kind, p)
        dpo_config = dpo.DPOConfig(**config, beta=p["beta"])
        if launches(p):
            train, held_out = data.write(data_dir)
            return _launched(ctx, "training.dpo", dpo_config, {"train": train, "eval": held_out}, p, on_log), snapshot
        return dpo.train_dpo(dpo_config, data.train, data.eval, on_log=on_log, should_stop=ctx.should_stop), snapshot
    reward = ModelVersion.objects.get(name=p["reward_model"])
    prompts = prompt_chats(training_prompts(campaign)[: p["limit"]])
    rloo_config = rloo.RLOOConfig(**config, beta=p["beta"], num_generations=p["num_generations"], max_completion_length=p["max_completion_length"])
    reward_dir = str(registry.checkpoint_dir(reward))
    if launches(p):
        data = {"prompts": write_jsonl([{"messages": prompt} for prompt in prompts], data_dir / "prompts.jsonl"), "reward_model": reward_dir}
        return _launched(ctx, "training.rloo", rloo_config, data, p, on_log), reward.metadata.get("snapshot")
    reward_fn = rloo.reward_fn_from_reward_model(reward_dir)
    return rloo.train_rloo(rloo_config, prompts, reward_fn, on_log=on_log, should_stop=ctx.should_stop), reward.metadata.get("snapshot")


def _launched(ctx: RunContext, module: str, config, data: dict, p: dict, on_log):
    from training.policy_io import load_result

    return train_launched(ctx, module, config, data, p, on_log, load_result)


for _kind in ("sft", "dpo", "rloo"):
    register(_kind, validate_params(_kind), run_policy_training(_kind))
