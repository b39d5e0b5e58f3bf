"""Policy jobs: SFT and DPO from the judgements register a new policy with its lineage; PPO/RLOO need a reward model."""
from __future__ import annotations

import pytest

from annotate.jobs import engine
from annotate.models import ModelVersion, Run, Snapshot
from tests.annotate.test_jobs import work_off_queue
from tests.annotate.test_reward_job import banana_campaign, label_all
from tests.conftest import api_client, join, make_campaign, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_policy_run_trains_from_judgements_and_registers_the_next_round(kind, tiny_checkpoint, artifacts):
    base = ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint), round=0)
    campaign = banana_campaign(prompts=40)  # 16 of them the evaluation split, which nothing trains on
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    run = engine.start_run(kind, campaign=campaign, params={"policy": "tiny-base", "max_steps": 2, "batch_size": 4})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(kind="policy", run=run)
    assert (version.parent, version.round, version.metadata["method"], version.metadata["campaign"]) == (base, 1, kind, "fruit")
    snapshot = Snapshot.objects.get(campaign=campaign, name=f"run-{run.pk}-{kind}")
    assert version.metadata["snapshot"] == {"name": snapshot.name, "version": snapshot.version, "content_hash": snapshot.content_hash}
    assert run.metrics.exists()
    from annotate.runs.registry import checkpoint_dir
    from training.models import load_causal_lm

    assert load_causal_lm(checkpoint_dir(version), device="cpu") is not None


@pytest.mark.parametrize("kind", ["ppo", "rloo"])
def test_reward_driven_methods_need_a_reward_model_first(kind):
    campaign = make_campaign("noreward", prompts=1)
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    response = api_client(carol).post("/api/v1/campaigns/noreward/runs/", {"kind": kind, "params": {}}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "reward_model"
    assert "reward model" in response.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.parametrize("params, field", [({"method": "gradient"}, "method"), ({"policy": {"reward_model": "x"}}, "policy"), ({"generate": {"models": ["x"]}}, "generate")])
def test_bad_round_params_name_the_field(params, field):
    campaign = make_campaign("badround", prompts=1)
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    response = api_client(carol).post("/api/v1/campaigns/badround/runs/", {"kind": "round", "params": params}, format="json")
    assert response.status_code == 400 and response.json()["field"] == field


def test_human_win_rate_counts_head_to_head_judgements_with_ties_as_half():
    from annotate.campaigns.imports.batches import import_prompts, import_responses
    from annotate.labeling import assignment, judgements
    from annotate.models import Campaign
    from annotate.runs.round_report import human_win_rate

    campaign = Campaign.objects.create(name="H", slug="h2h", task_type="pairwise", responses_per_task=2, overlap=1)
    import_prompts(campaign, [{"external_id": f"p{i}", "text": "?"} for i in range(4)])
    import_responses(campaign, [{"prompt": f"p{i}", "model": m, "text": f"{m}{i}"} for i in range(4) for m in ("new", "old")])
    alice = join(make_user("alice"), campaign, "labeler")
    outcomes = ["new", "new", "old", "tie"]
    for outcome in outcomes:
        lease = assignment.next_task_for(alice, campaign)
        by_model = dict(lease.task.responses.values_list("model_version__name", "id"))
        ranking = [[by_model["new"], by_model["old"]]] if outcome == "tie" else [[by_model[outcome]], [by_model["old" if outcome == "new" else "new"]]]
        judgements.submit(alice, lease.task, ranking)
    rate, count = human_win_rate(ModelVersion.objects.get(name="new"), ModelVersion.objects.get(name="old"))
    assert (rate, count) == (2.5 / 4, 4)
