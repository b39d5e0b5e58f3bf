"""Rounds on any campaign shape: k-way head-to-head tasks, prompts without a previous response,
params checked up front, and a failed round that leaves the registry as it was."""
from __future__ import annotations

import json
from io import StringIO

import pytest
import torch
from django.core.management import call_command

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.exports.snapshots import snapshot_file
from annotate.exports.training_data import evaluation_prompts
from annotate.jobs import engine
from annotate.labeling import assignment, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Campaign, ModelVersion, Response, Run, Snapshot, Task
from annotate.runs import rounds
from annotate.runs.round_report import round_reports
from tests.conftest import api_client, join, make_user

pytestmark = pytest.mark.django_db(transaction=True)
PARAMS = {
    "reward": {"base_model": "tiny-base", "learning_rate": 0.001, "epochs": 1, "eval_fraction": 0.25},
    "policy": {"iterations": 1, "rollout_batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "max_new_tokens": 4, "seed": 1},
    "generate": {"max_new_tokens": 4, "temperature": 1.0, "seed": 2},
}


def ranking_campaign(tiny_checkpoint) -> Campaign:
    """k=4: ten prompts judged once; the round-0 policy answered the first eight only (the last two by another model)."""
    campaign = Campaign.objects.create(name="Four", slug="four", task_type="ranking", responses_per_task=4, overlap=1)
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    ModelVersion.objects.create(name="tiny-r0", kind="policy", checkpoint_path=str(tiny_checkpoint), round=0, metadata={"campaign": "four"})
    import_prompts(campaign, [{"external_id": f"q{i}", "text": f"Question {i}?"} for i in range(10)])
    import_responses(campaign, [{"prompt": f"q{i}", "model": "tiny-r0" if i < 8 else "other", "text": "yes " * j + f"answer {i}"}
                                for i in range(10) for j in range(4)])
    return campaign


def snapshot_rows(campaign) -> list[dict]:
    snapshot = Snapshot.objects.get(campaign=campaign, name__endswith="-reward")
    return [json.loads(line) for line in snapshot_file(snapshot).read_text().splitlines()]


def rank_by_length(campaign, labeler) -> int:
    """Longer responses first (the hidden rule); returns how many tasks were judged."""
    count = 0
    while (lease := assignment.next_task_for(labeler, campaign)) is not None:
        texts = dict(Response.objects.filter(pk__in=task_response_ids(lease.task)).values_list("id", "text"))
        judgements.submit(labeler, lease.task, [[rid] for rid in sorted(texts, key=lambda r: (-len(texts[r]), r))])
        count += 1
    return count


def test_a_round_on_a_k4_campaign_fills_the_queue_with_mixed_tasks_and_reports_a_human_win_rate(tiny_checkpoint, artifacts, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only worker, on any machine
    campaign = ranking_campaign(tiny_checkpoint)
    labeler = join(make_user("sim"), campaign, "labeler")
    assert rank_by_length(campaign, labeler) == 10

    call_command("rlhf_round", "four", "--params", json.dumps(PARAMS), "--now", stdout=StringIO())

    new, old = ModelVersion.objects.get(kind="policy", round=1), ModelVersion.objects.get(name="tiny-r0")
    tasks = Task.objects.filter(campaign=campaign, responses__model_version=new).distinct()
    assert tasks.count() == 10  # one per prompt, none skipped
    for task in tasks:
        models = list(task.responses.values_list("model_version__name", flat=True))
        assert sorted(models) == sorted([new.name] * 2 + ["tiny-r0"] * 2)
    # the two prompts the old policy never answered got two of its responses in the same run
    assert Response.objects.filter(model_version=old, prompt__external_id__in=["q8", "q9"]).count() == 4
    assert rank_by_length(campaign, labeler) == 10
    carol = join(make_user("carol"), campaign, "admin")
    [report] = api_client(carol).get("/api/v1/campaigns/four/rounds/").json()
    assert report["round"] == 1 and report["policy"] == new.name and report["previous_policy"] == "tiny-r0"
    win = report["human_win_rate"]
    assert win["judgements"] == 10 and 0.0 <= win["low"] <= win["value"] <= win["high"] <= 1.0
    assert report["reward_model_accuracy"] is not None
    evaluation = report["evaluation"]
    assert evaluation["prompts"] == 5 and 0.0 <= evaluation["eos_share"] <= 1.0 and 0.0 <= evaluation["rm_win_rate"] <= 1.0
    assert evaluation["mean_length"] > 0 and all(isinstance(evaluation[k], float) for k in ("reward_mean", "previous_reward_mean", "kl"))
    # nothing trained on the evaluation prompts: the reward model's snapshot holds none of them
    held_out = {f"q{i}" for i in range(10)} - {row["prompt_id"] for row in snapshot_rows(campaign)}
    assert {p.external_id for p in evaluation_prompts(campaign)} == held_out and len(held_out) == 5
    assert report == round_reports(campaign)[0]
    run = Run.objects.get(kind="round")  # no preset given, no CUDA: the CPU preset, under the params given
    assert run.result["preset"] == run.params["preset"] == "cpu"
    assert run.params["policy"]["max_prompt_tokens"] == rounds.PRESETS["cpu"]["ppo"]["max_prompt_tokens"]
    assert run.params["policy"]["iterations"] == 1
    assert [phase for phase, _ in engine.phase_times(run)] == ["reward", "policy", "evaluate", "generate"]


def test_a_round_without_a_preset_takes_the_gpu_defaults_on_a_cuda_worker_and_a_bad_preset_is_refused(tiny_checkpoint, monkeypatch):
    campaign = ranking_campaign(tiny_checkpoint)
    run = engine.start_run("round", campaign=campaign, params={"policy": {"seed": 3}})
    assert run.params["preset"] == "auto" and run.params["policy"] == {"seed": 3}  # the worker chooses
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    rounds.resolve_preset(engine.RunContext(run))
    run.refresh_from_db()
    assert run.params["preset"] == "gpu"
    assert run.params["policy"] == {"seed": 3}  # nothing from the CPU preset: the PPO phase keeps its own defaults
    assert run.params["generate"] == {} and run.params["reward"]["max_length"] == 1024  # the reward phase's own default
    for preset in (None, "fast"):
        with pytest.raises(engine.InvalidParams) as refused:
            engine.start_run("round", campaign=campaign, params={"preset": preset})
        assert refused.value.field == "preset"


def test_a_bad_generate_param_is_refused_before_anything_is_queued_or_trained(tiny_checkpoint, artifacts):
    campaign = ranking_campaign(tiny_checkpoint)
    models = ModelVersion.objects.count()
    with pytest.raises(engine.InvalidParams) as refused:
        engine.start_run("round", campaign=campaign, params={**PARAMS, "generate": {"temperature": 9}})
    assert refused.value.field == "generate.temperature"
    with pytest.raises(engine.InvalidParams) as refused:
        engine.start_run("round", campaign=campaign, params={**PARAMS, "policy": {"ppo_epochs": 0}})
    assert refused.value.field == "policy.ppo_epochs"
    assert Run.objects.count() == 0 and ModelVersion.objects.count() == models


def test_a_failure_in_the_last_phase_leaves_the_registry_as_it_was(tiny_checkpoint, artifacts, monkeypatch):
    campaign = ranking_campaign(tiny_checkpoint)
    rank_by_length(campaign, join(make_user("sim"), campaign, "labeler"))
    before = set(ModelVersion.objects.values_list("name", flat=True))

    def disk_full(ctx, params):  # a failure only the last phase can meet
        raise engine.RunFailed("disk full")

    monkeypatch.setattr(rounds, "generate_into_queue", disk_full)
    with pytest.raises(Exception, match="the round failed"):
        call_command("rlhf_round", "four", "--params", json.dumps(PARAMS), "--now", stdout=StringIO())
    assert set(ModelVersion.objects.values_list("name", flat=True)) == before  # no orphan reward model or policy
    assert Run.objects.get().error == "disk full"


def test_now_runs_the_round_in_this_process_and_never_enqueues_it(tiny_checkpoint, artifacts):
    from django_tasks_db.models import DBTaskResult

    ranking_campaign(tiny_checkpoint)  # no judgements: the reward phase fails at once
    with pytest.raises(Exception, match="the round failed"):
        call_command("rlhf_round", "four", "--params", json.dumps(PARAMS), "--now", stdout=StringIO())
    run = Run.objects.get()
    assert run.status == "failed" and run.worker and not run.task_result_id and DBTaskResult.objects.count() == 0


def test_a_default_generate_run_uses_the_current_policy_and_fills_k_way_tasks(tiny_checkpoint, artifacts):
    from annotate.runs.generation import validate_params

    campaign = ranking_campaign(tiny_checkpoint)
    assert validate_params(campaign, {}) == validate_params(campaign, {"models": ["tiny-r0"], "n_per_prompt": 4})
    assert validate_params(campaign, {"models": ["tiny-r0", "tiny-base"]})["n_per_prompt"] == 1
    assert validate_params(campaign, {"head_to_head_with": "tiny-r0"})["n_per_prompt"] == 2  # ⌈4/2⌉ new per task
    with pytest.raises(engine.InvalidParams) as refused:
        validate_params(campaign, {"head_to_head_with": "tiny-r0", "n_per_prompt": 3})
    assert refused.value.field == "n_per_prompt"


def test_the_evaluation_split_is_a_tenth_at_least_sixteen_at_most_half_and_stable(db):
    from annotate.campaigns.evaluation import evaluation_prompt_ids

    campaign = Campaign.objects.create(name="Big", slug="big")
    import_prompts(campaign, [{"external_id": f"p{i}", "text": "?"} for i in range(400)])
    split = evaluation_prompt_ids(campaign)
    assert 30 <= len(split) <= 50  # about a tenth
    import_prompts(campaign, [{"external_id": f"n{i}", "text": "?"} for i in range(100)])
    assert split <= evaluation_prompt_ids(campaign)  # adding prompts never moves one out
    small = Campaign.objects.create(name="Small", slug="small")
    import_prompts(small, [{"external_id": f"p{i}", "text": "?"} for i in range(20)])
    assert len(evaluation_prompt_ids(small)) == 10
    import_prompts(small, [{"external_id": f"q{i}", "text": "?"} for i in range(40)])
    assert len(evaluation_prompt_ids(small)) == 16


def test_the_round_report_and_the_campaign_page_show_evaluation_and_human_win_rate_with_its_interval():
    from annotate.runs.round_report import wilson_interval
    from tests.annotate.test_campaign_pages import browser

    campaign = Campaign.objects.create(name="Report", slug="report", task_type="ranking", responses_per_task=4, overlap=1)
    old = ModelVersion.objects.create(name="r0", kind="policy", checkpoint_path="x", round=0, metadata={"campaign": "report"})
    reward = ModelVersion.objects.create(name="rm1", kind="reward", checkpoint_path="x", metadata={"campaign": "report", "metrics": {"eval/accuracy": 0.75}})
    figures = {"prompts": 16, "reward_mean": 0.4, "previous_reward_mean": 0.1, "kl": 2.5, "mean_length": 30.0, "eos_share": 0.9, "rm_win_rate": 0.7}
    ModelVersion.objects.create(name="r1", kind="policy", checkpoint_path="x", round=1, parent=old,
                                metadata={"campaign": "report", "method": "ppo", "reward_model": reward.name, "evaluation": figures})
    import_prompts(campaign, [{"external_id": f"q{i}", "text": "?"} for i in range(2)])
    import_responses(campaign, [{"prompt": f"q{i}", "model": m, "text": f"{m} {j} {i}"} for i in range(2) for m in ("r1", "r0") for j in range(2)])
    alice = join(make_user("alice"), campaign, "labeler")
    for _ in range(2):  # new, old, new, old: the new responses win 3 of their 4 pairs
        lease = assignment.next_task_for(alice, campaign)
        models = dict(Response.objects.filter(pk__in=task_response_ids(lease.task)).values_list("id", "model_version__name"))
        new, previous = [r for r in models if models[r] == "r1"], [r for r in models if models[r] == "r0"]
        order = [new[0], previous[0], new[1], previous[1]]
        judgements.submit(alice, lease.task, [[r] for r in order])
    carol = join(make_user("carol"), campaign, "admin")
    [report] = api_client(carol).get("/api/v1/campaigns/report/rounds/").json()
    low, high = wilson_interval(0.75, 2)
    assert report == {"round": 1, "policy": "r1", "previous_policy": "r0", "reward_model": "rm1", "reward_model_accuracy": 0.75,
                      "evaluation": figures, "human_win_rate": {"value": 0.75, "low": low, "high": high, "judgements": 2}}
    assert api_client(alice).get("/api/v1/campaigns/report/rounds/").status_code == 403
    page = browser(carol).get("/c/report/").content.decode()
    assert "0.75 (" in page and f"{low:.2f}–{high:.2f}" in page and "0.400 (0.100) on 16 prompts" in page
