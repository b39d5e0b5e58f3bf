"""Fits or refuses: workers report their memory; a training run that fits no live worker of its queue is refused at submission.

Also the `quantize` run param (QLoRA), refused where no worker can load a base in 4 or 8 bits.
"""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.jobs import engine
from annotate.jobs.workers import beat, live_workers, start_beating
from annotate.models import ModelVersion, Run, WorkerHeartbeat
from annotate.runs.fit import estimate_run, fit_summary, size_text
from tests.conftest import make_campaign

pytestmark = pytest.mark.django_db
MIB = 1024**2
GIB = 1024**3


@pytest.fixture
def tiny(db, tiny_checkpoint) -> ModelVersion:
    return ModelVersion.objects.create(name="tiny-base", kind=ModelVersion.Kind.BASE, checkpoint_path=str(tiny_checkpoint))


@pytest.fixture
def fruit(db):
    return make_campaign("fruit", prompts=2)


def report(worker_id: str, *, gpu_free: int | None = None, host_available: int = 0, queues=("default",), seen_ago: float = 0.0,
           bitsandbytes: bool = False, deepspeed: bool = False) -> WorkerHeartbeat:
    """A worker's heartbeat as db_worker writes it: one GPU with `gpu_free` bytes free, or none (host RAM only)."""
    devices = [] if gpu_free is None else [{"name": "NVIDIA Test GPU", "index": 0, "total": gpu_free * 2, "free": gpu_free}]
    return WorkerHeartbeat.objects.create(worker_id=worker_id, queues=list(queues), devices=devices, host_total=host_available * 2,
                                          host_available=host_available, bitsandbytes=bitsandbytes, deepspeed=deepspeed,
                                          seen_at=timezone.now() - timedelta(seconds=seen_ago))


REWARD = {"base_model": "tiny-base", "batch_size": 64, "max_length": 2048}


def test_a_run_that_fits_no_live_worker_is_refused_naming_the_estimate_and_the_largest_workers_memory(tiny, fruit):
    report("gpu-box:1", gpu_free=3 * MIB)
    report("cpu-box:2", host_available=2 * MIB)
    estimate = estimate_run("reward", fruit, REWARD)
    assert estimate.total > 3 * MIB
    with pytest.raises(engine.InvalidParams) as refused:
        engine.start_run("reward", campaign=fruit, params=REWARD)
    message = refused.value.message
    assert f"needs about {size_text(estimate.total)}" in message and "has 3 MiB free" in message, message
    assert "NVIDIA Test GPU (cuda:0) on gpu-box:1" in message and refused.value.field == "batch_size"
    assert not Run.objects.exists()


def test_a_worker_large_enough_lets_the_run_through(tiny, fruit):
    report("gpu-box:1", gpu_free=3 * MIB)
    report("big-box:2", gpu_free=80 * GIB)
    run = engine.start_run("reward", campaign=fruit, params=REWARD)
    assert run.status == "queued"


def test_a_cpu_worker_offers_its_available_host_ram(tiny, fruit):
    report("cpu-box:1", host_available=64 * GIB)
    assert engine.start_run("reward", campaign=fruit, params=REWARD).status == "queued"
    WorkerHeartbeat.objects.all().delete()
    report("cpu-box:2", host_available=3 * MIB)
    with pytest.raises(engine.InvalidParams, match=r"has 3 MiB free \(host RAM \(no GPU\) on cpu-box:2\)"):
        engine.start_run("reward", campaign=fruit, params=REWARD)


def test_without_any_worker_report_the_run_is_accepted_and_the_log_says_so(tiny, fruit, caplog):
    with caplog.at_level(logging.INFO, logger="annotate.runs.fit"):
        run = engine.start_run("reward", campaign=fruit, params=REWARD)
    assert run.status == "queued"
    assert "no worker of queue 'default' has reported its memory" in caplog.text


def test_stale_heartbeats_and_other_queues_are_ignored(tiny, fruit):
    report("dead-box:1", gpu_free=3 * MIB, seen_ago=600)  # died ten minutes ago
    report("gpu-only:2", gpu_free=3 * MIB, queues=("gpu",))  # serves another queue
    assert live_workers("default") == []
    assert engine.start_run("reward", campaign=fruit, params=REWARD).status == "queued"
    report("big-but-dead:3", gpu_free=80 * GIB, seen_ago=600)
    report("small-live:4", gpu_free=3 * MIB, queues=("*",))  # "*": every queue
    with pytest.raises(engine.InvalidParams, match="small-live:4"):
        engine.start_run("reward", campaign=fruit, params=REWARD)


def test_lora_and_4bit_lower_the_estimate_and_a_round_takes_its_larger_phase(tiny, fruit):
    full = estimate_run("sft", fruit, {"policy": "tiny-base", "use_lora": False})
    lora = estimate_run("sft", fruit, {"policy": "tiny-base"})
    qlora = estimate_run("sft", fruit, {"policy": "tiny-base", "quantize": "4bit"})
    assert full.trainable_state > lora.trainable_state and lora.weights > qlora.weights
    assert estimate_run("dpo", fruit, {"policy": "tiny-base", "use_lora": False}).weights == 2 * full.weights  # the frozen reference
    phases = [estimate_run("reward", fruit, {"base_model": "tiny-base"}), estimate_run("ppo", fruit, {"policy": "tiny-base"})]
    round_estimate = estimate_run("round", fruit, {"method": "ppo", "reward": {"base_model": "tiny-base"}, "policy": {"policy": "tiny-base"}})
    assert round_estimate.total == max(e.total for e in phases)
    assert estimate_run("reward", fruit, {"base_model": "not-on-disk"}) is None  # no shape, no estimate (and no refusal)


def test_the_estimate_follows_the_campaigns_longest_texts_up_to_the_runs_max_length(tiny, fruit):
    from annotate.models import Response

    before = estimate_run("reward", fruit, REWARD)
    Response.objects.filter(pk=Response.objects.filter(prompt__campaign=fruit).first().pk).update(text="word " * 2000)
    longer = estimate_run("reward", fruit, REWARD)
    capped = estimate_run("reward", fruit, {**REWARD, "max_length": 64})
    assert longer.activations > capped.activations > before.activations  # 2048 > 64 > 30 tokens


def test_the_run_form_line_names_the_estimate_and_the_largest_live_worker(tiny, fruit):
    assert fit_summary("reward", fruit, REWARD) == f"needs about {size_text(estimate_run('reward', fruit, REWARD).total)}; " \
        "no live worker of queue 'default' has reported"
    report("gpu-box:1", gpu_free=int(15.6 * GIB))
    assert fit_summary("reward", fruit, REWARD).endswith("largest live worker: 15.6 GiB free (NVIDIA Test GPU (cuda:0) on gpu-box:1)")


def test_the_campaign_page_shows_the_estimate_on_the_reward_form(tiny, fruit, client):
    from tests.conftest import join, make_user

    carol = join(make_user("carol"), fruit, "admin")
    client.force_login(carol)
    report("gpu-box:1", gpu_free=int(15.6 * GIB))
    page = client.get(f"/c/{fruit.slug}/").content.decode()
    assert "largest live worker: 15.6 GiB free" in page


# ---------------------------------------------------------------- the worker's side


@pytest.mark.django_db(transaction=True)
def test_a_worker_beats_with_its_queues_and_memory_and_removes_its_row_when_it_stops():
    stop = start_beating("here:1", ["default"])
    try:
        row = WorkerHeartbeat.objects.get(worker_id="here:1")
        import torch

        assert row.queues == ["default"] and row.host_available > 0 and row.host_total >= row.host_available
        assert len(row.devices) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    finally:
        stop()
    assert not WorkerHeartbeat.objects.filter(worker_id="here:1").exists()


def test_housekeeping_forgets_workers_that_died_without_saying_so(db):
    from django.core.management import call_command

    report("killed:1", host_available=GIB, seen_ago=3600)
    report("alive:2", host_available=GIB)
    call_command("housekeeping")
    assert list(WorkerHeartbeat.objects.values_list("worker_id", flat=True)) == ["alive:2"]


def test_a_busy_worker_keeps_its_idle_figures(db):
    report("here:1", host_available=5 * GIB, seen_ago=30)
    beat("here:1", ["default"], busy=True)  # a run is using the memory it offers the next one
    row = WorkerHeartbeat.objects.get(worker_id="here:1")
    assert row.host_available == 5 * GIB and timezone.now() - row.seen_at < timedelta(seconds=10)
    beat("here:1", ["default"])
    assert WorkerHeartbeat.objects.get(worker_id="here:1").host_available != 5 * GIB


# ---------------------------------------------------------------- quantize (QLoRA)


def test_quantize_is_refused_where_no_worker_can_load_in_4_or_8_bits(tiny, fruit):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-GPU refusal cannot happen here")
    with pytest.raises(engine.InvalidParams, match="needs a CUDA GPU") as refused:
        engine.start_run("sft", campaign=fruit, params={"policy": "tiny-base", "quantize": "4bit"})
    assert refused.value.field == "quantize"
    report("cpu-box:1", host_available=64 * GIB)
    with pytest.raises(engine.InvalidParams, match=r"none of the 1 live worker\(s\) of queue 'default' has one"):
        engine.start_run("reward", campaign=fruit, params={**REWARD, "quantize": "8bit"})
    with pytest.raises(engine.InvalidParams, match="only LoRA can train"):
        engine.start_run("dpo", campaign=fruit, params={"policy": "tiny-base", "quantize": "4bit", "use_lora": False})
    with pytest.raises(engine.InvalidParams, match="quantize must be one of"):
        engine.start_run("rloo", campaign=fruit, params={"policy": "tiny-base", "quantize": "2bit"})
    assert not Run.objects.exists()


def test_quantize_is_accepted_when_a_live_gpu_worker_has_bitsandbytes(tiny, fruit):
    report("gpu-box:1", gpu_free=80 * GIB, bitsandbytes=True)
    run = engine.start_run("sft", campaign=fruit, params={"policy": "tiny-base", "quantize": "4bit"})
    assert run.params["quantize"] == "4bit"


def test_a_worker_without_cuda_fails_a_quantized_run_with_the_reason(tiny_checkpoint, tmp_path):
    import torch

    from training.policy_io import PolicyTrainingError, load_policy

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: see test_qlora_loads_a_4bit_base_under_trainable_adapters_on_a_gpu")
    with pytest.raises(PolicyTrainingError, match="needs a CUDA GPU"):
        load_policy(tiny_checkpoint, "4bit")


@pytest.mark.django_db(transaction=True)
def test_a_run_accepted_without_reports_fails_on_the_worker_before_loading_if_it_cannot_fit(tiny_checkpoint, artifacts):
    from annotate.models import Response
    from tests.annotate.test_jobs import work_off_queue

    ModelVersion.objects.create(name="tiny-base", kind=ModelVersion.Kind.BASE, checkpoint_path=str(tiny_checkpoint))
    campaign = make_campaign("long", prompts=2)
    Response.objects.filter(pk=Response.objects.filter(prompt__campaign=campaign).first().pk).update(text="word " * 20_000)
    # 1,024 sequences of 8,192 tokens per step: hundreds of GiB of activations, more than this machine has
    run = engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base", "batch_size": 512, "max_length": 8192})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "this run needs about" in run.error and "GiB free" in run.error, run.error
    assert not (artifacts / "runs" / str(run.pk) / "data").exists()  # refused before the dataset was even built
    assert not ModelVersion.objects.filter(run=run).exists()
