"""Training runs on several processes: the job launches `accelerate launch` (2 CPU processes, gloo) and follows it.

Also the run params that choose it (`num_processes`, `deepspeed`) and their refusals: PPO refuses DeepSpeed,
DeepSpeed needs a live worker that reports it (CUDA and the deepspeed package).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotate.jobs import engine
from annotate.models import ModelVersion, Run
from annotate.runs.registry import checkpoint_dir
from tests.annotate.test_fits_or_refuses import report
from tests.annotate.test_jobs import work_off_queue
from tests.annotate.test_reward_job import banana_campaign, label_all
from tests.conftest import api_client, join, make_campaign, make_user

pytestmark = pytest.mark.django_db(transaction=True)
GIB = 1024**3


def test_a_reward_run_on_two_processes_learns_and_reports_as_it_goes(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=64)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    params = {"base_model": "tiny-base", "learning_rate": 1e-3, "epochs": 4, "eval_fraction": 0.25, "batch_size": 4,
              "name": "fruit-rm-2p", "num_processes": 2}
    run = engine.start_run("reward", campaign=campaign, params=params)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(name="fruit-rm-2p")
    assert version.metadata["metrics"]["eval/accuracy"] >= 0.9
    assert run.metrics.filter(name="loss").exists() and "launching 2 processes" in run.log_tail
    resolved = json.loads((Path(run.artifacts["model"]) / "reward_config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2


def trained_policy(kind: str, campaign, params: dict) -> tuple[Run, ModelVersion]:
    """A `kind` run worked off the queue, succeeded, and the policy version it registered."""
    run = engine.start_run(kind, campaign=campaign, params=params)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    return run, ModelVersion.objects.get(kind="policy", run=run)


def test_a_dpo_run_on_two_processes_learns_and_registers_the_next_round(tiny_checkpoint, artifacts):
    base = ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    campaign = banana_campaign(prompts=40)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    params = {"policy": "tiny-base", "learning_rate": 1e-2, "max_steps": 6, "batch_size": 4, "num_processes": 2}
    run, version = trained_policy("dpo", campaign, params)
    assert (version.parent, version.round, version.metadata["method"]) == (base, 1, "dpo")
    final = version.metadata["final_metrics"]
    assert final["train/loss"] < 0.6932 and final["rewards/margins"] > 0  # ln 2: the loss at the reference
    assert "launching 2 processes" in run.log_tail and run.metrics.filter(name="rewards/margins").count() == 6
    run_dir = Path(version.metadata["adapter_dir"]).parent
    assert json.loads((run_dir / "dpo_config.json").read_text())["resolved"]["world_size"] == 2


def fruit_reward_model(tiny_checkpoint, artifacts) -> None:
    """A reward model as training.reward saves one: the tiny model with a seeded score head, registered as fruit-rm."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from training.models import load_tokenizer

    torch.manual_seed(0)
    reward_dir = artifacts / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=1).save_pretrained(reward_dir)
    load_tokenizer(tiny_checkpoint).save_pretrained(reward_dir)
    ModelVersion.objects.create(name="fruit-rm", kind="reward", checkpoint_path=str(reward_dir), metadata={"campaign": "fruit"})


def test_an_rloo_run_on_two_processes_scores_with_the_campaigns_reward_model(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    campaign = make_campaign("fruit", prompts=8)
    fruit_reward_model(tiny_checkpoint, artifacts)
    params = {"policy": "tiny-base", "reward_model": "fruit-rm", "max_steps": 2, "batch_size": 4, "num_generations": 4,
              "max_completion_length": 4, "num_processes": 2}
    run, version = trained_policy("rloo", campaign, params)
    assert run.metrics.filter(name="rewards/reward_model/mean").count() == 2 and "launching 2 processes" in run.log_tail
    assert version.metadata["reward_model"] == "fruit-rm" and (checkpoint_dir(version) / "config.json").is_file()


def test_a_ppo_run_on_two_processes_registers_the_next_policy(tiny_checkpoint, artifacts):
    base = ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    campaign = make_campaign("fruit", prompts=8)
    fruit_reward_model(tiny_checkpoint, artifacts)
    params = {"policy": "tiny-base", "iterations": 2, "rollout_batch_size": 2, "minibatch_size": 2, "ppo_epochs": 1,
              "max_new_tokens": 4, "num_processes": 2}
    run, version = trained_policy("ppo", campaign, params)
    assert (version.parent, version.round, version.metadata["method"]) == (base, 1, "ppo")
    assert "launching 2 processes" in run.log_tail and run.metrics.filter(name="objective/scores").count() == 2
    assert (checkpoint_dir(version) / "config.json").is_file() and version.metadata["final_metrics"]["objective/kl"] >= 0


def test_cancelling_a_launched_sft_run_ends_its_processes_and_registers_nothing(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    campaign = banana_campaign(prompts=40)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    run = engine.start_run("sft", campaign=campaign, params={"policy": "tiny-base", "max_steps": 50, "batch_size": 4, "num_processes": 2})
    Run.objects.filter(pk=run.pk).update(cancel_requested=True)  # as if cancel came right after the start
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "cancelled" and "launching 2 processes" in run.log_tail
    assert not ModelVersion.objects.filter(kind="policy", run=run).exists()
    assert not (artifacts / "runs" / str(run.pk) / "sft" / "merged").exists()


# ---------------------------------------------------------------- the params


def test_num_processes_is_checked(campaign):
    with pytest.raises(engine.InvalidParams) as error:
        engine.start_run("reward", campaign=campaign, params={"num_processes": 0})
    assert error.value.field == "num_processes"


def test_ppo_takes_several_processes_but_refuses_deepspeed_and_says_why():
    from annotate.runs.ppo import validate_ppo

    campaign = make_campaign("ppo", prompts=1)
    ModelVersion.objects.create(name="ppo-rm", kind="reward", checkpoint_path="/srv/rm", metadata={"campaign": "ppo"})
    assert validate_ppo(campaign, {"num_processes": 2})["num_processes"] == 2
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    for params, field in (({"deepspeed": "zero2"}, "deepspeed"), ({"num_processes": 0}, "num_processes")):
        response = api_client(carol).post("/api/v1/campaigns/ppo/runs/", {"kind": "ppo", "params": params}, format="json")
        assert response.status_code == 400 and response.json()["field"] == field
    deepspeed = api_client(carol).post("/api/v1/campaigns/ppo/runs/", {"kind": "ppo", "params": {"deepspeed": "zero3"}}, format="json")
    assert "two models" in deepspeed.json()["detail"] and "RLOO" in deepspeed.json()["detail"]
    assert not Run.objects.exists()


@pytest.fixture
def tiny(tiny_checkpoint) -> ModelVersion:
    return ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))


def test_deepspeed_is_refused_where_no_live_worker_has_it(tiny):
    campaign = make_campaign("fruit", prompts=2)
    with pytest.raises(engine.InvalidParams, match="needs a CUDA GPU") as refused:  # no reports: this machine (no CUDA here)
        engine.start_run("dpo", campaign=campaign, params={"policy": "tiny-base", "deepspeed": "zero3"})
    assert refused.value.field == "deepspeed"
    report("gpu-box:1", gpu_free=80 * GIB, bitsandbytes=True)
    with pytest.raises(engine.InvalidParams, match=r"none of the 1 live worker\(s\) of queue 'default' has one") as refused:
        engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base", "deepspeed": "zero2"})
    assert refused.value.field == "deepspeed"
    with pytest.raises(engine.InvalidParams, match="deepspeed must be one of"):
        engine.start_run("sft", campaign=campaign, params={"policy": "tiny-base", "deepspeed": "zero1"})
    assert not Run.objects.exists()


def test_deepspeed_is_accepted_when_a_live_gpu_worker_reports_it(tiny):
    campaign = make_campaign("fruit", prompts=2)
    report("gpu-box:1", gpu_free=80 * GIB, bitsandbytes=True, deepspeed=True)
    run = engine.start_run("sft", campaign=campaign, params={"policy": "tiny-base", "deepspeed": "zero3", "num_processes": 8})
    assert (run.params["deepspeed"], run.params["num_processes"]) == ("zero3", 8)
    with pytest.raises(engine.InvalidParams, match="do not combine") as refused:
        engine.start_run("sft", campaign=campaign, params={"policy": "tiny-base", "deepspeed": "zero2", "quantize": "4bit"})
    assert refused.value.field == "deepspeed"


def test_a_worker_reports_whether_it_can_run_deepspeed():
    from annotate.jobs.workers import machine_figures

    figures = machine_figures()
    import importlib.util

    assert figures["deepspeed"] == (bool(figures["devices"]) and importlib.util.find_spec("deepspeed") is not None)


def test_quantize_reaches_every_process_of_a_launched_reward_run(tiny_checkpoint, artifacts):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the 4-bit load would succeed (see tests/training/test_qlora.py)")
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=32)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    report("gpu-box:1", gpu_free=80 * GIB, bitsandbytes=True)  # accepted at submission; this CPU worker then runs it
    run = engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base", "quantize": "4bit", "num_processes": 2,
                                                                     "eval_fraction": 0.25})
    work_off_queue()
    run.refresh_from_db()
    # the children were asked for a 4-bit base: without CUDA, each refuses with the QLoRA reason
    assert run.status == "failed" and "needs a CUDA GPU" in run.error, run.error
    run_file = json.loads((artifacts / "runs" / str(run.pk) / "model.run.json").read_text())
    assert run_file["config"]["quantize"] == "4bit"


def test_deepspeed_counts_only_a_gpus_shard_when_checking_that_a_run_fits(tiny):
    from annotate.runs.fit import estimate_run

    campaign = make_campaign("fruit", prompts=2)
    params = {"base_model": "tiny-base", "batch_size": 64, "max_length": 2048, "use_lora": False}
    whole = estimate_run("reward", campaign, params)
    # more than the whole state and weights over 8 GPUs need on each, less than the run on one GPU
    free = whole.activations + (whole.weights + whole.trainable_state) // 2
    report("gpu-box:1", gpu_free=free, deepspeed=True)
    with pytest.raises(engine.InvalidParams, match="needs about"):
        engine.start_run("reward", campaign=campaign, params=params)
    run = engine.start_run("reward", campaign=campaign, params={**params, "deepspeed": "zero3", "num_processes": 8})
    sharded = estimate_run("reward", campaign, run.params)
    assert sharded.weights == whole.weights // 8 and sharded.trainable_state == whole.trainable_state // 8
    assert sharded.activations == whole.activations  # each GPU holds its own batch's
    zero2 = estimate_run("reward", campaign, {**run.params, "deepspeed": "zero2"}, gpus=4)
    assert (zero2.weights, zero2.trainable_state) == (whole.weights, whole.trainable_state // 8)  # num_processes wins over gpus
