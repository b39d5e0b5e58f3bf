"""The reward job end to end: judgements in the database → a trained, registered reward model → the scoring endpoint."""
from __future__ import annotations

import pytest

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.exports.options import ExportFilters, ExportOptions
from annotate.exports.snapshots import create_snapshot, sha256_file, snapshot_file
from annotate.jobs import engine
from annotate.labeling import assignment, judgements
from annotate.labeling.validation import task_response_ids
from annotate.models import Campaign, ModelVersion, Run, Snapshot
from tests.annotate.test_jobs import work_off_queue
from tests.conftest import api_client, join, make_campaign, make_user

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
    """Prefer the response with `prefer` in it; a tie when asked, or when no single response has it."""
    while (lease := assignment.next_task_for(labeler, campaign)) is not None:
        ids = task_response_ids(lease.task)
        texts = dict(lease.task.responses.values_list("id", "text"))
        having = [i for i in ids if prefer in texts[i]]
        if tie or len(having) != 1:
            ranking = [ids]
        else:
            ranking = [having, [i for i in ids if i not in having]]
        judgements.submit(labeler, lease.task, ranking)


def test_a_reward_run_trains_registers_and_scores(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=64)
    alice = join(make_user("alice"), campaign, "labeler")
    label_all(campaign, alice)
    params = {"base_model": "tiny-base", "learning_rate": 1e-3, "epochs": 4, "eval_fraction": 0.25, "name": "fruit-rm"}
    run = engine.start_run("reward", campaign=campaign, params=params)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(name="fruit-rm")
    assert (version.kind, version.parent.name, version.run_id) == ("reward", "tiny-base", run.pk)
    assert len(version.metadata["dataset_hash"]) == 64
    snapshot = Snapshot.objects.get(campaign=campaign, name=f"run-{run.pk}-reward")  # frozen by the run, downloadable
    assert version.metadata["snapshot"] == run.result["snapshot"] == {"name": snapshot.name, "version": 1, "content_hash": snapshot.content_hash}
    assert sha256_file(snapshot_file(snapshot)) == snapshot.content_hash and snapshot.row_counts["rows"] == 64 - 16  # the 16 evaluation prompts are no one's training data
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


def test_a_reward_run_trains_on_the_named_snapshot_not_on_later_judgements(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=16)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    create_snapshot(campaign, "first-batch", ExportOptions(shape="rankings", format="jsonl.gz"), ExportFilters())
    import_prompts(campaign, [{"external_id": f"late{i}", "text": f"Tell me something, {WORDS[i]}."} for i in range(8)])
    import_responses(campaign, [{"prompt": f"late{i}", "model": m, "text": f"{WORDS[i]} {t} is nice."} for i in range(8) for m, t in (("plain", "stone"), ("fruity", "banana"))])
    label_all(campaign, join(make_user("bob"), campaign, "labeler"))
    run = engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base", "snapshot": "first-batch", "eval_fraction": 0.25})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(kind="reward")
    assert version.metadata["snapshot"]["name"] == "first-batch"
    assert version.metadata["train_pairs"] + version.metadata["eval_pairs"] == 16  # alice's 16, none of bob's 8
    assert not Snapshot.objects.filter(name__startswith="run-").exists()


@pytest.mark.parametrize("snapshot, expected", [("nope", "no snapshot named"), ("as-pairs", "training reads rankings")])
def test_a_snapshot_training_cannot_read_is_refused(snapshot, expected, artifacts):
    campaign = make_campaign("rms", prompts=1)
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    create_snapshot(campaign, "as-pairs", ExportOptions(shape="pairs"), ExportFilters())
    response = api_client(carol).post("/api/v1/campaigns/rms/runs/", {"kind": "reward", "params": {"snapshot": snapshot}}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "snapshot" and expected in response.json()["detail"]
    assert not Run.objects.exists()


def test_too_few_pairs_fail_clearly_and_register_nothing(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=3)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    run = engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base"})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "not enough preference data" in run.error
    assert not ModelVersion.objects.filter(kind="reward").exists()


def test_a_campaign_of_only_ties_fails_clearly(tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=12)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"), tie=True)
    run = engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base"})
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


def test_a_trained_reward_model_guides_the_queue_and_tracks_drift(tiny_checkpoint, artifacts):
    from annotate.runs.registry import latest_reward_model

    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    campaign = banana_campaign(prompts=64)
    alice = join(make_user("alice"), campaign, "labeler")
    label_all(campaign, alice)
    engine.start_run("reward", campaign=campaign, params={"base_model": "tiny-base", "learning_rate": 1e-3, "epochs": 4, "eval_fraction": 0.25})
    work_off_queue()
    assert latest_reward_model(campaign) is not None
    # new work arrives: clear pairs (one banana) and hard ones (both banana)
    import_prompts(campaign, [{"external_id": f"n{i}", "text": f"Tell me something, {WORDS[i]}."} for i in range(6)])
    clear = [{"prompt": f"n{i}", "model": m, "text": t} for i in range(3) for m, t in (("plain", f"{WORDS[i]} stone is nice."), ("fruity", f"{WORDS[i]} banana is nice."))]
    hard = [{"prompt": f"n{i}", "model": m, "text": t} for i in range(3, 6) for m, t in (("plain", f"{WORDS[i]} banana is nice."), ("fruity", f"{WORDS[i + 1]} banana is nice."))]
    import_responses(campaign, clear + hard)
    engine.start_run("prioritize", campaign=campaign, params={})
    work_off_queue()
    priorities = dict(campaign.tasks.filter(prompt__external_id__startswith="n").values_list("prompt__external_id", "priority"))
    assert min(priorities[f"n{i}"] for i in range(3, 6)) > max(priorities[f"n{i}"] for i in range(3))
    # the humans keep preferring bananas (and call the both-banana pairs ties): the reward model agrees with them
    label_all(campaign, join(make_user("bob"), campaign, "labeler"))
    run = engine.start_run("drift", campaign=campaign, params={})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.result["pairs"] >= 3 and run.result["agreement"] >= 0.6
    assert latest_reward_model(campaign).metadata["drift"][-1]["agreement"] == run.result["agreement"]


def test_best_of_n_keeps_each_prompts_best_samples():
    from annotate.runs.generation import keep_best
    from training.generate import Completion

    batches = [[Completion(p, s, f"p{p}s{s}", 3, True) for p in (0, 1) for s in range(2)], [Completion(p, s, f"p{p}s{s}", 3, True) for p in (0, 1) for s in range(2, 4)]]
    scores = {"p0s0": 0.1, "p0s1": 0.9, "p0s2": 0.5, "p0s3": 0.2, "p1s0": 0.3, "p1s1": 0.0, "p1s2": 0.8, "p1s3": 0.7}
    kept = [c for batch in keep_best(iter(batches), 4, 2, lambda i, texts: [scores[t] for t in texts]) for c in batch]
    assert sorted(c.text for c, _ in kept) == ["p0s1", "p0s2", "p1s2", "p1s3"]
    assert all(extra["best_of"] == 4 and extra["reward_score"] == scores[c.text] for c, extra in kept)
