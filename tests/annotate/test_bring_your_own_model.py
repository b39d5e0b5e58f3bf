"""Bring your own model: registered through the command and the API (staff), refused with nothing written, then used by every job."""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotate.jobs import engine
from annotate.models import ModelVersion, Response
from tests.annotate.test_jobs import work_off_queue
from tests.annotate.test_reward_job import banana_campaign, label_all
from tests.byo_models import GPT2_TEMPLATE, build_model
from tests.conftest import api_client, join, make_campaign, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Path]:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    root = tmp_path_factory.mktemp("checkpoints")
    return {"llama": build_model(root / "llama", "llama"), "qwen2": build_model(root / "qwen2", "qwen2"),
            "gpt2": build_model(root / "gpt2", "gpt2"), "qwen2-reward": build_model(root / "qwen2-reward", "qwen2", reward=True)}


@pytest.fixture
def roots(settings, artifacts, sources):
    settings.MODEL_ROOTS = [artifacts, sources["llama"].parent]
    return settings.MODEL_ROOTS


@pytest.fixture
def staff(db):
    return make_user("stella", is_staff=True)


def registered_dirs(artifacts: Path) -> list[Path]:
    folder = artifacts / "models" / "registered"
    return sorted(folder.iterdir()) if folder.exists() else []


def register(name, path, *args) -> str:
    out = StringIO()
    call_command("register_model", name, str(path), *args, stdout=out)
    return out.getvalue()


def test_the_command_registers_a_checkpoint_with_its_metadata(roots, sources, artifacts, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(GPT2_TEMPLATE)
    assert "GPT2LMHeadModel" in register("my-gpt2", sources["gpt2"], "--kind", "policy", "--chat-template", str(template))
    version = ModelVersion.objects.get(name="my-gpt2")
    assert (version.kind, version.round, version.parent) == ("policy", 0, None)
    meta = version.metadata
    assert meta["pad"] == {"token": "<|pad|>", "id": 280, "source": "added"} and meta["chat_template_given"] and meta["registered"] == "linked"
    assert meta["source"] == str(sources["gpt2"]) and meta["size_bytes"] == (sources["gpt2"] / "model.safetensors").stat().st_size
    from annotate.runs.registry import checkpoint_dir

    assert (checkpoint_dir(version) / "model.safetensors").is_symlink()
    register("my-llama", sources["llama"], "--kind", "base", "--copy")
    copied = checkpoint_dir(ModelVersion.objects.get(name="my-llama")) / "model.safetensors"
    assert not copied.is_symlink() and copied.read_bytes() == (sources["llama"] / "model.safetensors").read_bytes()


def test_the_api_registers_for_staff_only(roots, sources, staff, campaign, carol, rita):
    body = {"name": "my-qwen", "path": str(sources["qwen2"]), "kind": "base"}
    assert api_client(rita).post("/api/v1/models/", body, format="json").status_code == 403
    response = api_client(staff).post("/api/v1/models/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "my-qwen" and response.json()["metadata"]["architecture"] == "Qwen2ForCausalLM"
    assert ModelVersion.objects.get(pk=response.json()["id"]).kind == "base"
    assert "my-qwen" in [m["name"] for m in api_client(staff).get("/api/v1/models/").json()]  # GET still lists the registry


@pytest.mark.parametrize("change, problem", [
    ({"kind": "policy", "path": "gpt2"}, "no chat template"),
    ({"path": "/etc"}, "outside the allowed model roots"),
    ({"path": "nobody/not-cached"}, "not in the local Hugging Face cache"),
    ({"kind": "reward", "path": "wider"}, "shapes do not match"),
    ({"path": "no-weights"}, "weights missing"),
    ({"name": "taken"}, "already exists"),
    ({"chat_template": "{% for m in messages %}{{ m.content }"}, "chat template"),
])
def test_a_refused_checkpoint_is_a_400_naming_the_problem_and_writes_nothing(change, problem, roots, sources, staff, artifacts):
    ModelVersion.objects.create(name="taken", kind="base")
    broken = artifacts / "incoming"
    for name, edit in {"wider": {"hidden_size": 64}, "no-weights": None}.items():
        target = broken / name
        target.mkdir(parents=True)
        for file in sources["llama"].iterdir():
            if not (edit is None and file.name == "model.safetensors"):
                (target / file.name).write_bytes(file.read_bytes())
        if edit:
            (target / "config.json").write_text(json.dumps({**json.loads((target / "config.json").read_text()), **edit}))
    body = {"name": "new", "path": str(sources["llama"]), "kind": "policy", **change}
    if body["path"] in ("gpt2",):
        body["path"] = str(sources["gpt2"])
    elif body["path"] in ("wider", "no-weights"):
        body["path"] = str(broken / body["path"])
    response = api_client(staff).post("/api/v1/models/", body, format="json")
    assert response.status_code == 400 and problem in response.json()["detail"], response.content
    assert list(ModelVersion.objects.values_list("name", flat=True)) == ["taken"] and registered_dirs(artifacts) == []
    extra = []
    if "chat_template" in body:
        (artifacts / "template.jinja").write_text(body["chat_template"])
        extra = ["--chat-template", str(artifacts / "template.jinja")]
    with pytest.raises(CommandError, match=problem.split()[0]):
        register(body["name"], body["path"], "--kind", body["kind"], *extra)
    assert ModelVersion.objects.count() == 1 and registered_dirs(artifacts) == []


def test_an_adapter_registers_over_its_base_and_generates(roots, sources, artifacts, tiny_adapter):
    register("llama-base", sources["llama"], "--kind", "base")
    from annotate.runs.registry import checkpoint_dir

    base = ModelVersion.objects.get(name="llama-base")
    adapter = tiny_adapter(checkpoint_dir(base), artifacts / "incoming" / "adapter")
    register("llama-tuned", adapter, "--kind", "policy")  # its base found from adapter_config.json
    version = ModelVersion.objects.get(name="llama-tuned")
    assert version.parent == base and version.metadata["adapter"]["r"] == 4
    campaign = make_campaign("gen", prompts=2)
    run = engine.start_run("generate", campaign=campaign, params={"models": ["llama-tuned"], "n_per_prompt": 2, "max_new_tokens": 4})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert Response.objects.filter(model_version=version).count() == 4


@pytest.fixture
def tiny_adapter():
    def build(base_dir: Path, out: Path) -> Path:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]))
        model.save_pretrained(out)
        return out
    return build


def test_the_registry_page_is_for_staff(roots, sources, staff, campaign, rita, client):
    register("my-llama", sources["llama"], "--kind", "policy")
    client.force_login(rita)
    assert client.get("/models/").status_code == 403
    client.force_login(staff)
    page = client.get("/models/").content.decode()
    assert "my-llama" in page and "LlamaForCausalLM" in page and "&lt;reserved_0&gt; (existing)" in page


def test_registered_models_of_three_architectures_go_through_generate_reward_ppo_and_dpo(roots, sources, staff, artifacts):
    client = api_client(staff)
    register("byo-llama", sources["llama"], "--kind", "policy")
    assert client.post("/api/v1/models/", {"name": "byo-qwen", "path": str(sources["qwen2"]), "kind": "base"}, format="json").status_code == 201
    assert client.post("/api/v1/models/", {"name": "byo-gpt2", "path": str(sources["gpt2"]), "kind": "policy",
                                           "chat_template": GPT2_TEMPLATE}, format="json").status_code == 201
    campaign = banana_campaign(prompts=64)
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    reward = engine.start_run("reward", campaign=campaign, params={"base_model": "byo-qwen", "name": "qwen-rm", "learning_rate": 3e-3,
                                                                    "epochs": 4, "eval_fraction": 0.25})
    generate = engine.start_run("generate", campaign=campaign, params={"models": ["byo-llama", "byo-gpt2"], "max_new_tokens": 4, "limit": 4})
    work_off_queue()
    for run in (reward, generate):
        run.refresh_from_db()
        assert run.status == "succeeded", run.error
    assert Response.objects.filter(model_version__name="byo-gpt2").count() == 4
    assert ModelVersion.objects.get(name="qwen-rm").metadata["metrics"]["eval/accuracy"] >= 0.9  # it learnt the labelers' preference
    # a Llama policy against a reward model with the Qwen2 tokenizer: scored on the re-tokenised text
    ppo = engine.start_run("ppo", campaign=campaign, params={"policy": "byo-llama", "reward_model": "qwen-rm", "iterations": 2,
                                                             "rollout_batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "max_new_tokens": 6})
    dpo = engine.start_run("dpo", campaign=campaign, params={"policy": "byo-gpt2", "max_steps": 2, "batch_size": 4})
    work_off_queue()
    for run, parent in ((ppo, "byo-llama"), (dpo, "byo-gpt2")):
        run.refresh_from_db()
        assert run.status == "succeeded", run.error
        new = ModelVersion.objects.get(run=run, kind="policy")
        assert new.parent.name == parent and new.round == 1


def test_large_model_options_checkpoint_activations_and_refuse_bf16_on_a_worker_without_a_gpu(roots, sources, artifacts):
    import torch

    register("byo-llama", sources["llama"], "--kind", "policy")
    campaign = banana_campaign(prompts=40)  # 16 of them are the held-out evaluation split
    label_all(campaign, join(make_user("alice"), campaign, "labeler"))
    common = {"policy": "byo-llama", "max_steps": 1, "batch_size": 4}
    checkpointed = engine.start_run("dpo", campaign=campaign, params={**common, "gradient_checkpointing": True})
    bf16 = engine.start_run("dpo", campaign=campaign, params={**common, "bf16": True})
    work_off_queue()
    checkpointed.refresh_from_db()
    bf16.refresh_from_db()
    assert checkpointed.status == "succeeded", checkpointed.error
    if not torch.cuda.is_available():
        assert bf16.status == "failed" and "bf16 needs a GPU" in bf16.error
        assert not ModelVersion.objects.filter(run=bf16).exists()


def test_a_ppo_run_whose_estimate_cannot_fit_is_refused_with_the_estimate_before_loading(roots, sources, artifacts):
    register("byo-llama", sources["llama"], "--kind", "policy")
    register("byo-rm", sources["qwen2-reward"], "--kind", "reward")
    campaign = make_campaign("huge", prompts=2)
    # 4096 sequences of ~2,100 tokens per minibatch: tens of GiB of activations and logits, whatever the model
    run = engine.start_run("ppo", campaign=campaign, params={"policy": "byo-llama", "reward_model": "byo-rm", "iterations": 1,
                                                             "rollout_batch_size": 4096, "minibatch_size": 4096, "max_new_tokens": 2048})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "this run needs about" in run.error and "GiB free" in run.error, run.error
    assert not (artifacts / "runs" / str(run.pk) / "ppo" / "metrics.jsonl").exists()  # refused before training began
    assert not ModelVersion.objects.filter(run=run).exists()
