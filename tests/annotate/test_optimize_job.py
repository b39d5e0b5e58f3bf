"""The optimize job end to end: bad params are a 400 naming the field; a real run registers each optimised
version with its lineage and figures, shows them beside the source (API and page), and the versions generate
into the queue like any other model; a method failing halfway registers nothing."""
from __future__ import annotations

import shutil

import pytest
import torch
from django.test import Client

from annotate.jobs import engine
from annotate.models import ModelVersion, Response, Run
from tests.annotate.test_jobs import work_off_queue
from tests.conftest import api_client, join, make_campaign, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared: one thread is faster when they are busy
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def policy(tiny_checkpoint, tmp_path):
    """A LoRA-trained policy laid out as the policy jobs write it: policy/ (merged) with adapter/ beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from training.models import load_causal_lm

    out = tmp_path / "ppo"
    shutil.copytree(tiny_checkpoint, out / "policy")
    adapted = get_peft_model(load_causal_lm(tiny_checkpoint, device="cpu"), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear"))
    adapted.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(out / "adapter")
    return ModelVersion.objects.create(name="tiny-ppo", kind="policy", checkpoint_path=str(out / "policy"), round=1,
                                       metadata={"campaign": "opt", "method": "ppo", "adapter_dir": str(out / "adapter")})


@pytest.fixture
def campaign(db):
    return make_campaign("opt", prompts=3)


@pytest.fixture
def carol(campaign):
    return join(make_user("carol", is_staff=True), campaign, "admin")


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_run(user, params):
    return api_client(user).post("/api/v1/campaigns/opt/runs/", {"kind": "optimize", "params": params}, format="json")


@pytest.mark.parametrize(
    "params, field",
    [
        ({"model": "tiny-ppo", "methods": ["prune"], "sparsity": 0}, "sparsity"),
        ({"model": "tiny-ppo", "methods": ["prune"], "sparsity": 1}, "sparsity"),
        ({"model": "tiny-ppo", "methods": ["prune"], "sparsity": 1.5}, "sparsity"),
        ({"model": "tiny-ppo", "methods": ["prune"], "sparsity": "half"}, "sparsity"),
        ({"model": "tiny-ppo", "methods": ["bnb4"]}, "methods"),
        ({"model": "tiny-ppo", "methods": ["int8", "bnb8"]}, "methods"),
        ({"model": "tiny-ppo", "methods": []}, "methods"),
        ({"model": "tiny-ppo", "methods": ["zip"]}, "methods"),
        ({"model": "tiny-ppo", "methods": ["int8", "int8"]}, "methods"),
        ({"model": "tiny-rm", "methods": ["int8"]}, "model"),
        ({"model": "ghost", "methods": ["int8"]}, "model"),
        ({"methods": ["int8"]}, "model"),
        ({"model": "tiny-base", "methods": ["merge"]}, "methods"),
        ({"model": "tiny-ppo", "methods": ["int8"], "reward_model": "tiny-ppo"}, "reward_model"),
        ({"model": "tiny-ppo", "methods": ["int8"], "colour": "red"}, "colour"),
    ],
)
def test_bad_optimize_params_are_a_400_naming_the_field_and_register_nothing(policy, carol, tiny_checkpoint, params, field):
    if field == "methods" and any(m.startswith("bnb") for m in params["methods"]) and torch.cuda.is_available():
        pytest.skip("a GPU machine can run bitsandbytes")
    ModelVersion.objects.create(name="tiny-rm", kind="reward", checkpoint_path=str(tiny_checkpoint))
    ModelVersion.objects.create(name="tiny-base", kind="base", checkpoint_path=str(tiny_checkpoint))
    before = ModelVersion.objects.count()
    response = post_run(carol, params)
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert not Run.objects.exists()
    assert ModelVersion.objects.count() == before


def test_4_bit_on_a_cpu_only_deployment_says_why(policy, carol):
    if torch.cuda.is_available():
        pytest.skip("a GPU machine can run bitsandbytes")
    body = post_run(carol, {"model": "tiny-ppo", "methods": ["bnb4"]}).json()
    assert "needs a CUDA GPU" in body["detail"] and "int8" in body["detail"]


def test_an_optimize_run_registers_each_version_with_its_lineage_and_figures(policy, carol, campaign, tiny_checkpoint, artifacts):
    ModelVersion.objects.create(name="opt-rm", kind="reward", checkpoint_path=str(tiny_checkpoint), metadata={"campaign": "opt"})
    params = {"model": "tiny-ppo", "methods": ["merge", "int8", "prune"], "sparsity": 0.5, "limit": 3, "max_new_tokens": 6}
    response = post_run(carol, params)
    assert response.status_code == 201, response.content
    work_off_queue()
    run = Run.objects.get(pk=response.json()["id"])
    assert run.status == "succeeded", run.error
    assert run.params["reward_model"] == "opt-rm"  # the campaign's latest, by default

    versions = {v.metadata["method"]: v for v in ModelVersion.objects.filter(parent=policy)}
    assert set(versions) == {"merge", "int8", "prune"}
    assert {v.name for v in versions.values()} == {"tiny-ppo-merged", "tiny-ppo-int8", "tiny-ppo-pruned50"}
    for v in versions.values():
        assert (v.kind, v.round, v.run_id) == ("policy", 1, run.pk)
        assert "campaign" not in v.metadata  # not a trained policy: rounds and the current policy ignore it
        figures = v.metadata["figures"]
        assert set(figures) >= {"size_mb", "load_s", "tokens_per_s", "perplexity", "reward", "agreement"}
        assert figures["perplexity"] > 1 and 0 <= figures["agreement"] <= 1 and isinstance(figures["reward"], float)
        assert v.metadata["source_figures"]["agreement"] == 1.0
    assert versions["prune"].metadata["optimization"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert versions["int8"].metadata["figures"]["size_mb"] < versions["int8"].metadata["source_figures"]["size_mb"]
    assert [row["method"] for row in run.result["rows"]] == ["source", "merge", "int8", "prune"]
    assert run.result["rows"][0]["model"] == "tiny-ppo"

    # the same figures from the API, for the source and for a version
    for model_id in (policy.pk, versions["int8"].pk):
        body = api_client(carol).get(f"/api/v1/models/{model_id}/comparison/").json()
        assert body["source"] == "tiny-ppo"
        assert [c["run"] for c in body["comparisons"]] == [run.pk]
        assert body["comparisons"][0]["rows"] == run.result["rows"]
    page = browser(carol).get("/c/opt/optimized/")
    assert page.status_code == 200 and b"tiny-ppo-int8" in page.content and b"<svg" in page.content

    # an optimised version generates into the queue like any other
    gen = engine.start_run("generate", campaign=campaign, params={"models": ["tiny-ppo-int8", "tiny-ppo-pruned50"], "max_new_tokens": 4})
    work_off_queue()
    gen.refresh_from_db()
    assert gen.status == "succeeded", gen.error
    assert Response.objects.filter(model_version__name="tiny-ppo-int8").count() == 3
    assert Response.objects.filter(model_version__name="tiny-ppo-pruned50").count() == 3
    # but quantised weights cannot be trained: refused when the run is asked for, naming the source to use
    for kind, field in (("dpo", "policy"), ("ppo", "policy"), ("reward", "base_model")):
        response = api_client(carol).post("/api/v1/campaigns/opt/runs/", {"kind": kind, "params": {field: "tiny-ppo-int8"}}, format="json")
        assert response.status_code == 400 and response.json()["field"] == field and "quantised" in response.json()["detail"]
    from annotate.runs.registry import QUANTIZED_MARKER
    from training.checkpoints import QUANTIZED_MARKER as WRITTEN_BY_TRAINING

    assert QUANTIZED_MARKER == WRITTEN_BY_TRAINING


def test_comparisons_are_shown_only_to_readers_of_the_campaign(policy, carol, campaign, artifacts):
    run = engine.start_run("optimize", campaign=campaign, params={"model": "tiny-ppo", "methods": ["int8"], "limit": 2, "max_new_tokens": 4})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    labeler = join(make_user("alice"), campaign, "labeler")
    assert api_client(labeler).get(f"/api/v1/models/{policy.pk}/comparison/").status_code == 404  # not a model they may see
    assert browser(labeler).get("/c/opt/optimized/").status_code == 403
    outsider = make_user("mallory")
    assert browser(outsider).get("/c/opt/optimized/").status_code == 404
    researcher = join(make_user("rita"), campaign, "researcher")
    assert len(api_client(researcher).get(f"/api/v1/models/{policy.pk}/comparison/").json()["comparisons"]) == 1


def test_a_method_failing_halfway_fails_the_run_and_registers_nothing(policy, campaign, artifacts):
    params = {"model": "tiny-ppo", "methods": ["int8", "prune"], "sparsity": 0.999, "structured": True, "limit": 2}
    run = engine.start_run("optimize", campaign=campaign, params=params)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "every MLP channel" in run.error
    assert not ModelVersion.objects.filter(parent=policy).exists()
