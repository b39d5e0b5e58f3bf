"""The reward job end to end: judgements in the database → a trained, registered reward model → the scoring endpoint."""
from __future__ import annotations

import pytest

from annotate import assignment, jobs, judgements
from annotate.judgements import task_response_ids
from annotate.models import Membership, ModelVersion, Run
from tests.annotate.test_jobs import work_off_queue
from tests.conftest import api_client, join, make_campaign, make_user
from annotate.imports import import_prompts, import_responses
from annotate.models import Campaign

pytestmark = pytest.mark.django_db(transaction=True)
WORDS = "river stone cloud lamp paper violin garden window".split()


def banana_campaign(prompts: int) -> Campaign:
    """Pairwise tasks where one response mentions bananas: a preference a tiny model can learn."""
    campaign = Campaign.objects.create(name="Fruit", slug="fruit", task_type="pairwise", responses_per_task=2, overlap=1)
    import_prompts(campaign, [{"external_id": f"q{i}", "text": f"Tell me something, {WORDS[i % 8]}."} for i in range(prompts)])
    rows = []
    for i in range(prompts):
        rows.append({"prompt": f"q{i}", "model": "plain", "text": f"{WORDS[i % 8]} {WORDS[(i + 3) % 8]} is nice."})
        rows.append({"prompt": f"q{i}", "model": "fruity", "text": f"{WORDS[(i + 5) % 8]} banana is nice."})
    import_responses(campaign, rows)
    return campaign


def label_all(campaign, labeler, prefer="banana", tie=False):
    while (lease := assignment.next_task_for(labeler, campaign)) is not None:
        ids = task_response_ids(lease.task)
        if tie:
            ranking = [ids]
        else:
            texts = dict(lease.task.responses.values_list("id", "text"))
            best = next(i for i in ids if prefer in texts[i])
            ranking = [[best], [i for i in ids if i != best]]
        judgements.submit(labeler, lease.task, ranking)


def test_a_reward_run_trains_registers_and_scores(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=64)
    alice = join(make_user("alice"), campaign, "labeler")
    label_all(campaign, alice)
    params = {"base_model": "tiny-base", "learning_rate": 1e-3, "epochs": 4, "eval_fraction": 0.25, "name": "fruit-rm"}
    run = jobs.start_run("reward", campaign=campaign, params=params)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(name="fruit-rm")
    assert (version.kind, version.parent.name, version.run_id) == ("reward", "tiny-base", run.pk)
    assert len(version.metadata["dataset_hash"]) == 64
    assert version.metadata["metrics"]["eval/accuracy"] >= 0.9
    assert run.metrics.filter(name="loss").exists()
    carol = join(make_user("carol"), campaign, "admin")
    response = api_client(carol).post(
        f"/api/v1/models/{version.pk}/score/", {"prompt": "Tell me something, lamp.", "responses": ["lamp banana is nice.", "lamp stone is nice."]}, format="json"
    )
    assert response.status_code == 200, response.content
    liked, plain = response.json()["scores"]
    assert liked > plain
    assert api_client(join(make_user("alice2"), campaign, "labeler")).post(
        f"/api/v1/models/{version.pk}/score/", {"prompt": "x", "responses": ["y"]}, format="json"
    ).status_code == 404


def test_too_few_pairs_fail_clearly_and_register_nothing(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=3)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    run = jobs.start_run("reward", campaign=campaign, params={"base_model": "tiny-base"})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "not enough preference data" in run.error
    assert not ModelVersion.objects.filter(kind="reward").exists()


def test_a_campaign_of_only_ties_fails_clearly(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=12)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"), tie=True)
    run = jobs.start_run("reward", campaign=campaign, params={"base_model": "tiny-base"})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "tie" in run.error.lower()
    assert not ModelVersion.objects.filter(kind="reward").exists()


@pytest.mark.parametrize("params, field", [({"base_model": "nope"}, "base_model"), ({"epochs": 0}, "epochs"), ({"aggregation": "mean"}, "aggregation"), ({"use_lora": "yes"}, "use_lora")])
def test_bad_reward_params_name_the_field(params, field):
    campaign = make_campaign("rmp", prompts=1)
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    response = api_client(carol).post("/api/v1/campaigns/rmp/runs/", {"kind": "reward", "params": params}, format="json")
    assert response.status_code == 400 and response.json()["field"] == field
    assert not Run.objects.exists()
