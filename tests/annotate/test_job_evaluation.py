"""PPO, RLOO, DPO and SFT jobs evaluate the policy they make on the campaign's held-out split, as rounds do:
the figures land in the policy's metadata, the run's result and the round report; nothing trains on the split."""
from __future__ import annotations

import json

import pytest

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.exports.snapshots import snapshot_file
from annotate.exports.training_data import evaluation_prompts
from annotate.jobs import engine
from annotate.models import Campaign, ModelVersion, Snapshot
from annotate.runs.round_report import round_reports
from tests.annotate.test_jobs import work_off_queue
from tests.annotate.test_reward_job import WORDS, label_all
from tests.conftest import join, make_user

pytestmark = pytest.mark.django_db(transaction=True)
JOBS = {
    "ppo": {"iterations": 1, "rollout_batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "max_new_tokens": 4, "seed": 1},
    "rloo": {"max_steps": 1, "batch_size": 4, "num_generations": 2, "max_completion_length": 4, "seed": 1},
}


def fruit_campaign(tiny_checkpoint, *, reward_model: bool):
    """40 distinct prompts (16 of them the evaluation split), labelled to prefer bananas; the tiny model as base and, if asked, as reward model."""
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    if reward_model:
        ModelVersion.objects.create(name="fruit-rm", kind="reward", checkpoint_path=str(tiny_checkpoint), metadata={"campaign": "fruit"})
    campaign = Campaign.objects.create(name="Fruit", slug="fruit", task_type="pairwise", responses_per_task=2, overlap=1)
    import_prompts(campaign, [{"external_id": f"q{i}", "text": f"Question {i}: tell me something, {WORDS[i % 8]}."} for i in range(40)])
    import_responses(campaign, [{"prompt": f"q{i}", "model": model, "text": f"{WORDS[(i + 5) % 8]} {fruit} is nice."}
                                for i in range(40) for model, fruit in (("plain", "stone"), ("fruity", "banana"))])
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    return campaign


def spy_on(monkeypatch, module: str, function: str) -> list:
    """The prompts each call of training's `function` received (the call itself goes ahead)."""
    import importlib

    target = importlib.import_module(module)
    original, seen = getattr(target, function), []

    def spy(config, prompts, *args, **kwargs):
        seen.append([turn["content"] for chat in prompts for turn in chat])
        return original(config, prompts, *args, **kwargs)

    monkeypatch.setattr(target, function, spy)
    return seen


def assert_plausible(figures: dict, prompts: int, *, scored: bool) -> None:
    assert figures["prompts"] == prompts
    assert figures["kl"] >= 0.0  # the k3 estimate of KL(new ‖ parent) is never negative
    assert 0.0 <= figures["eos_share"] <= 1.0 and 0.0 < figures["mean_length"]
    if scored:
        assert 0.0 <= figures["rm_win_rate"] <= 1.0 and all(isinstance(figures[k], float) for k in ("reward_mean", "previous_reward_mean"))
    else:
        assert figures["reward_mean"] is figures["previous_reward_mean"] is figures["rm_win_rate"] is None


@pytest.mark.parametrize("kind", ["ppo", "rloo"])
def test_a_reward_driven_job_evaluates_its_policy_on_the_held_out_split_it_never_trained_on(kind, tiny_checkpoint, artifacts, monkeypatch):
    campaign = fruit_campaign(tiny_checkpoint, reward_model=True)
    trained_on = spy_on(monkeypatch, f"training.{kind}", f"train_{kind}")
    run = engine.start_run(kind, campaign=campaign, params={"policy": "tiny-base", **JOBS[kind]})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    held_out = {p.messages[-1]["content"] for p in evaluation_prompts(campaign)}
    assert len(held_out) == 16 and trained_on and not held_out & set(trained_on[0])
    policy = ModelVersion.objects.get(run=run, kind="policy")
    evaluation = policy.metadata["evaluation"]
    assert_plausible(evaluation, 16, scored=True)
    assert evaluation["reward_model"] == "fruit-rm" and evaluation["previous_policy"] == "tiny-base"
    assert run.result["evaluation"] == {**{k: v for k, v in evaluation.items() if k not in ("examples", "previous_policy", "seed")}}
    assert [e["prompt"] for e in evaluation["examples"]] == [p.messages[-1]["content"] for p in evaluation_prompts(campaign)[:4]]
    assert all(isinstance(e["new"]["score"], float) and isinstance(e["previous"]["text"], str) for e in evaluation["examples"])
    assert run.metrics.filter(name="evaluation/kl").exists()
    [report] = round_reports(campaign)
    assert report["policy"] == policy.name and report["evaluation"]["prompts"] == 16 and report["reward_model"] == "fruit-rm"


@pytest.mark.parametrize("kind, reward_model", [("dpo", False), ("sft", True)])
def test_a_preference_job_is_evaluated_under_the_campaigns_latest_reward_model_or_without_reward_figures(kind, reward_model, tiny_checkpoint, artifacts):
    campaign = fruit_campaign(tiny_checkpoint, reward_model=reward_model)
    run = engine.start_run(kind, campaign=campaign, params={"policy": "tiny-base", "max_steps": 2, "batch_size": 4})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    evaluation = ModelVersion.objects.get(run=run, kind="policy").metadata["evaluation"]
    assert_plausible(evaluation, 16, scored=reward_model)
    assert evaluation["reward_model"] == ("fruit-rm" if reward_model else None)
    assert ("no reward model yet" in run.log_tail) is not reward_model
    # the judgements it learnt from (its snapshot) hold none of the evaluation prompts
    rows = [json.loads(line) for line in snapshot_file(Snapshot.objects.get(name=f"run-{run.pk}-{kind}")).read_text().splitlines()]
    assert rows and not {row["prompt_id"] for row in rows} & {p.external_id for p in evaluation_prompts(campaign)}
    assert round_reports(campaign)[0]["evaluation"]["prompts"] == 16


def test_a_failed_evaluation_is_logged_and_leaves_the_trained_policy_registered(tiny_checkpoint, artifacts, monkeypatch):
    import training.evaluate

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(training.evaluate, "evaluate_policy", out_of_memory)
    campaign = fruit_campaign(tiny_checkpoint, reward_model=False)
    run = engine.start_run("dpo", campaign=campaign, params={"policy": "tiny-base", "max_steps": 1, "batch_size": 4})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.result["evaluation"] is None and "evaluation failed" in run.log_tail and "CUDA out of memory" in run.log_tail
    assert "evaluation" not in ModelVersion.objects.get(run=run, kind="policy").metadata
