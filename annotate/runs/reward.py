"""The reward-model job (kind `reward`): judgements → TRL preference pairs → RewardTrainer → a registered reward model."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.exports.training_data import snapshot_judgements, snapshot_param, snapshot_record, training_snapshot
from annotate.jobs.engine import InvalidParams, RunCancelled, RunContext, RunFailed, register
from annotate.jobs.params import choice, flag, integer, model_name, number
from annotate.models import Campaign, ModelVersion
from annotate.runs import registry
from annotate.runs.fit import quantize_param, refuse_if_it_cannot_fit_here
from annotate.runs.launching import launch_params, launches, train_launched

ALLOWED = {"base_model", "name", "use_lora", "learning_rate", "epochs", "batch_size", "max_length", "aggregation", "weighting",
           "eval_fraction", "seed", "include_excluded", "center_rewards_coefficient", "use_margin", "snapshot", "num_processes", "quantize", "deepspeed"}


def validate_params(campaign: Campaign | None, params: dict) -> dict:
    if campaign is None:
        raise InvalidParams("a reward run belongs to a campaign.", field="campaign")
    if unknown := sorted(set(params) - ALLOWED):
        raise InvalidParams(f"unknown params {unknown}; allowed: {sorted(ALLOWED)}.", field=unknown[0])
    name = model_name(params)  # before anything slow: a bad name used to fail only after training
    base = params.get("base_model", registry.DEFAULT_BASE_NAME)
    if error := registry.training_base_error(base):
        raise InvalidParams(f"base {error}", field="base_model")
    registry.generating_model_param(campaign, base, "base_model")
    clean = {
        "base_model": base,
        "name": name,
        "snapshot": snapshot_param(campaign, params),
        "aggregation": choice(params, "aggregation", ("all", "majority")),
        "weighting": choice(params, "weighting", ("uniform", "per_judgement", "rank_distance")),
        "use_lora": flag(params, "use_lora", True),
        "include_excluded": flag(params, "include_excluded", False),
        "use_margin": flag(params, "use_margin", False),
    }
    clean["learning_rate"] = number(params, "learning_rate", 1e-4 if clean["use_lora"] else 1e-5, low=0.0, high=1.0, low_open=True)
    clean["epochs"] = number(params, "epochs", 1.0, low=0.0, high=100.0, low_open=True)
    clean["eval_fraction"] = number(params, "eval_fraction", 0.1, low=0.0, high=0.5, low_open=True)
    clean["center_rewards_coefficient"] = number(params, "center_rewards_coefficient", 0.01, low=0.0, high=1.0)
    clean["batch_size"] = integer(params, "batch_size", 8, 1, 512)
    clean["max_length"] = integer(params, "max_length", 1024, 16, 8192)
    clean["seed"] = integer(params, "seed", 0, 0, 2**31 - 1)
    if quantize := quantize_param(params, use_lora=clean["use_lora"]):  # QLoRA: the base in 4/8 bits (annotate.runs.fit)
        clean["quantize"] = quantize
    return {**clean, **launch_params(params)}  # num_processes, deepspeed (annotate.runs.launching)


def run_reward_training(ctx: RunContext) -> dict:
    version, result = train_and_register(ctx, ctx.params)
    return {"model": version.name, "model_id": version.pk, "metrics": version.metadata["metrics"], "dataset_hash": result.dataset_hash,
            "snapshot": version.metadata["snapshot"], "chosen_scores": result.chosen_scores, "rejected_scores": result.rejected_scores}


def train_and_register(ctx: RunContext, p: dict):
    """Build the dataset from a snapshot of the campaign's judgements, train, register; returns (ModelVersion, RewardResult)."""
    from training.preferences import PreferenceDatasetError, PreferenceOptions, build_preference_dataset
    from training.reward import load_result, train_reward_model
    from training.reward_config import RewardConfig, RewardTrainingError
    from training.trl_common import TrainingCancelled

    run, campaign = ctx.run, ctx.campaign
    refuse_if_it_cannot_fit_here("reward", campaign, p)  # fail now, not out of memory an hour in
    options = PreferenceOptions(weighting=p["weighting"], aggregation=p["aggregation"], include_excluded=p["include_excluded"],
                                eval_fraction=p["eval_fraction"], seed=p["seed"])
    snapshot = training_snapshot(run, "reward", p.get("snapshot"), include_paused=p["include_excluded"])
    ctx.log(f"training data: snapshot {snapshot.name} v{snapshot.version} ({snapshot.content_hash[:12]})")
    try:
        dataset = build_preference_dataset(snapshot_judgements(snapshot), options)
    except PreferenceDatasetError as exc:
        raise RunFailed(f"not enough preference data: {exc}") from exc
    out = Path(settings.ARTIFACTS_DIR) / "runs" / str(run.pk)
    dataset.write(out / "data")
    ctx.artifact("dataset", out / "data")
    ctx.log(f"dataset {dataset.content_hash[:12]}: {len(dataset.train)} train / {len(dataset.eval)} eval pairs; {dataset.stats}")
    try:
        base = registry.resolve_for_generation(p["base_model"])
    except registry.RegistryError as exc:
        raise RunFailed(str(exc)) from exc
    config = RewardConfig(
        base_model=str(registry.checkpoint_dir(base)), output_dir=str(out / "model"), use_lora=p["use_lora"],
        learning_rate=p["learning_rate"], num_train_epochs=p["epochs"], per_device_train_batch_size=p["batch_size"],
        max_length=p["max_length"], use_margin=p["use_margin"], center_rewards_coefficient=p["center_rewards_coefficient"] or None,
        seed=p["seed"], use_cpu=not _cuda(), logging_steps=1, quantize=p.get("quantize"),
    )
    total_steps = max(1, int(len(dataset.train) / p["batch_size"] * p["epochs"] + 0.999))

    def on_log(step: int, metrics: dict) -> None:
        ctx.metrics(step, {k: v for k, v in metrics.items() if k in ("loss", "accuracy", "margin", "mean_reward", "grad_norm", "learning_rate")})
        ctx.progress(min(step / total_steps, 0.99), f"step {step} of about {total_steps}")

    try:
        if launches(p):  # several processes, or DeepSpeed: the same entry point under accelerate launch
            data = {"train": out / "data" / "train.jsonl", "eval": out / "data" / "eval.jsonl"}
            result = train_launched(ctx, "training.reward", config, data, p, on_log, load_result)
        else:
            result = train_reward_model(config, dataset.train, dataset.eval, on_log=on_log, should_stop=ctx.should_stop)
    except TrainingCancelled as exc:
        raise RunCancelled() from exc
    except RewardTrainingError as exc:
        raise RunFailed(str(exc)) from exc
    ctx.artifact("model", result.output_dir)
    metrics = {**result.metrics, "dropped_train": result.dropped_train, "dropped_eval": result.dropped_eval}
    with transaction.atomic():
        version = registry.register(
            p["name"] or f"{campaign.slug}-reward-{run.pk}", ModelVersion.Kind.REWARD, result.output_dir, parent=base, run=run,
            metadata={"metrics": metrics, "dataset_hash": result.dataset_hash, "snapshot": snapshot_record(snapshot), "calibration": result.calibration,
                      "train_pairs": result.train_pairs, "eval_pairs": result.eval_pairs, "campaign": campaign.slug},
        )
    ctx.log(f"registered {version.name}: held-out accuracy {metrics['eval/accuracy']:.3f}")
    return version, result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


register("reward", validate_params, run_reward_training)
