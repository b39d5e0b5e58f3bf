"""Endpoints: registering OpenAI-compatible servers, generation runs through them, serving a trained policy.

The server is tests/chat_server.py, a real HTTP server speaking the chat-completions protocol over
the tiny model: it stands in for vLLM, TGI and SGLang (and hosted APIs). Runs go through a real
db_worker in this process, so the worker's environment holds the key, as on a GPU box.
"""
from __future__ import annotations

import json
import logging
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from annotate.campaigns.imports.batches import import_prompts
from annotate.jobs import engine
from annotate.models import ModelVersion, Response, Run
from annotate.runs.endpoints import register_endpoint
from tests.chat_server import ChatServer
from tests.conftest import api_client, make_campaign, make_user

pytestmark = pytest.mark.django_db(transaction=True)
KEY = "sk-test-7f3a9c1e-never-stored"


def work_off_queue():
    call_command("db_worker", "--batch", "--queue-name", "*", "--no-startup-delay", stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def chat(tiny_checkpoint):
    server = ChatServer(str(tiny_checkpoint))
    server.url = server.start()
    yield server
    server.stop()


@pytest.fixture
def staff(db):
    return make_user("sam", is_staff=True)


def endpoint_body(**settings):
    return {"name": "vllm-box", "kind": "endpoint", "endpoint": {"base_url": "http://gpu-box:8000/v1", "model": "policy-r1", **settings}}


# REGISTERING


def test_staff_register_an_endpoint_and_only_the_keys_variable_name_is_stored(staff):
    body = endpoint_body(api_key_env="VLLM_KEY", max_concurrency=4, requests_per_minute=600, sampling={"temperature": 0.3})
    response = api_client(staff).post("/api/v1/models/", body, format="json")
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(name="vllm-box")
    assert version.kind == "endpoint" and version.checkpoint_path == ""
    assert version.metadata["endpoint"] == {"base_url": "http://gpu-box:8000/v1", "model": "policy-r1", "api_key_env": "VLLM_KEY",
                                            "max_concurrency": 4, "requests_per_minute": 600, "timeout_seconds": 120, "sampling": {"temperature": 0.3}}


@pytest.mark.parametrize(("settings", "field"), [
    ({"base_url": "ftp://gpu-box/v1"}, "base_url"),
    ({"base_url": "gpu-box:8000"}, "base_url"),
    ({"base_url": "http://user:sk-123@gpu-box/v1"}, "base_url"),
    ({"api_key_env": "sk-live-1234-abcd"}, "api_key_env"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"sampling": {"temperature": 9}}, "sampling.temperature"),
    ({"sampling": {"beam": 2}}, "sampling"),
])
def test_a_bad_endpoint_is_a_400_naming_the_field(staff, settings, field):
    response = api_client(staff).post("/api/v1/models/", endpoint_body(**settings), format="json")
    assert response.status_code == 400 and response.json()["field"] == field
    assert not ModelVersion.objects.filter(name="vllm-box").exists()


def test_registering_an_endpoint_is_for_staff_and_names_are_unique(staff):
    rita = make_user("rita")
    assert api_client(rita).post("/api/v1/models/", endpoint_body(), format="json").status_code == 403
    assert api_client(staff).post("/api/v1/models/", endpoint_body(), format="json").status_code == 201
    again = api_client(staff).post("/api/v1/models/", endpoint_body(), format="json")
    assert again.status_code == 400 and again.json()["field"] == "name"
    wrong_kind = api_client(staff).post("/api/v1/models/", {**endpoint_body(), "name": "x", "kind": "policy"}, format="json")
    assert wrong_kind.status_code == 400 and "path" in wrong_kind.json()  # a policy is a checkpoint: it needs a path


def test_the_command_registers_an_endpoint(db):
    out = StringIO()
    call_command("register_model", "tgi-box", "--endpoint", "https://tgi.example/v1", "--endpoint-model", "tgi", "--api-key-env", "TGI_KEY", stdout=out)
    assert "registered endpoint tgi-box" in out.getvalue()
    assert ModelVersion.objects.get(name="tgi-box").metadata["endpoint"]["api_key_env"] == "TGI_KEY"
    with pytest.raises(CommandError, match="base_url"):
        call_command("register_model", "bad", "--endpoint", "file:///etc/passwd", "--endpoint-model", "m")


# GENERATING THROUGH AN ENDPOINT


def test_a_generation_run_samples_through_the_endpoint_and_the_key_goes_nowhere_else(chat, artifacts, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ARBITER_TEST_ENDPOINT_KEY", KEY)
    register_endpoint("served", chat.url, "tiny-served", api_key_env="ARBITER_TEST_ENDPOINT_KEY", max_concurrency=3)
    campaign = make_campaign("gen", prompts=4)
    import_prompts(campaign, [{"external_id": "rag", "text": "What trains the policy?", "context": ["PPO trains the policy."]}])
    run = engine.start_run("generate", campaign=campaign, params={"models": ["served"], "n_per_prompt": 2, "max_new_tokens": 6, "seed": 3})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.result == {"responses": 10, "tasks_built": 5}
    responses = Response.objects.filter(model_version__name="served")
    assert responses.count() == 10
    params = responses.first().generation_params
    assert params["endpoint"] == "served" and params["base_url"] == chat.url and params["served_model"] == "tiny-served"
    assert params["max_tokens"] == 6 and params["n_per_prompt"] == 2 and params["seed"] == 3 and "finish_reason" not in params
    assert {s.authorization for s in chat.seen} == {f"Bearer {KEY}"} and {s.model for s in chat.seen} == {"tiny-served"}
    rag = next(s for s in chat.seen if s.prompt == "What trains the policy?")
    assert rag.messages[0]["role"] == "system" and "PPO trains the policy." in rag.messages[0]["content"]
    assert_key_nowhere(run, caplog)


def assert_key_nowhere(run, caplog):
    dump = StringIO()
    call_command("dumpdata", "annotate", stdout=dump)
    assert KEY not in dump.getvalue()
    with connection.cursor() as cursor:
        cursor.execute("SELECT log_tail, result, error, params, artifacts FROM annotate_run WHERE id = %s", [run.pk])
        assert KEY not in json.dumps(cursor.fetchone(), default=str)
    assert not Response.objects.filter(generation_params__icontains=KEY).exists()
    assert KEY not in caplog.text


def test_failed_prompts_are_recorded_and_the_rest_kept(chat, artifacts):
    register_endpoint("served", chat.url, "tiny-served", max_concurrency=2)
    campaign = make_campaign("partial", prompts=4)
    chat.faults["Question 1?"] = ["malformed"]
    run = engine.start_run("generate", campaign=campaign, params={"models": ["served"], "max_new_tokens": 4, "n_per_prompt": 1})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.result["responses"] == 3
    report = run.result["failures"]["served"]
    assert report["failed_prompts"] == 1 and report["failure_reasons"] == {"malformed answer": 1}
    assert report["failures"][0]["prompt"] == "p1"
    assert "1 of 4 prompts failed" in run.log_tail
    rows = [json.loads(line) for line in Path(run.artifacts["failures:served"]).read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["p1"]


def test_a_run_whose_every_request_fails_fails_saying_why(chat, artifacts):
    register_endpoint("served", chat.url, "tiny-served")
    campaign = make_campaign("broken", prompts=2)
    chat.faults.update({"Question 0?": ["malformed"], "Question 1?": ["malformed"]})
    run = engine.start_run("generate", campaign=campaign, params={"models": ["served"]})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "every request failed" in run.error and "malformed answer" in run.error


def test_a_worker_without_the_keys_variable_fails_the_run_clearly(chat, artifacts, monkeypatch):
    monkeypatch.delenv("ARBITER_UNSET_KEY", raising=False)
    register_endpoint("served", chat.url, "tiny-served", api_key_env="ARBITER_UNSET_KEY")
    run = engine.start_run("generate", campaign=make_campaign("nokey", prompts=1), params={"models": ["served"]})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "$ARBITER_UNSET_KEY" in run.error and not chat.seen


def test_cancelling_stops_the_requests_in_flight_and_keeps_what_was_stored(chat, artifacts):
    register_endpoint("served", chat.url, "tiny-served", max_concurrency=1)
    campaign = make_campaign("cancel", prompts=5)
    chat.faults["Question 2?"] = ["hold"]  # not answered until the server stops (30 s at most)

    def cancel_on_the_third_prompt(prompt):
        if prompt == "Question 2?":
            Run.objects.filter(campaign=campaign).update(cancel_requested=True)
            connection.close()  # this is the server's thread

    chat.on_request = cancel_on_the_third_prompt
    run = engine.start_run("generate", campaign=campaign, params={"models": ["served"], "max_new_tokens": 4, "n_per_prompt": 1})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert Response.objects.filter(model_version__name="served").count() == 2  # prompts 0 and 1, stored before the cancel
    assert [s.prompt for s in chat.seen] == ["Question 0?", "Question 1?", "Question 2?"]


def test_an_endpoints_default_sampling_applies_where_the_run_sets_none(db):
    register_endpoint("served", "http://gpu-box/v1", "m", sampling={"temperature": 0.3, "max_tokens": 5})
    campaign = make_campaign("defaults", prompts=1)
    run = engine.start_run("generate", campaign=campaign, params={"models": ["served"]})
    assert run.params["temperature"] == 0.3 and run.params["max_new_tokens"] == 5 and run.params["top_p"] == 1.0
    run = engine.start_run("generate", campaign=campaign, params={"models": ["served"], "temperature": 1.0})
    assert run.params["temperature"] == 1.0


# SERVING A TRAINED POLICY


def test_a_policy_served_by_an_endpoint_generates_through_it(chat, artifacts, staff, tiny_checkpoint):
    register_endpoint("policy-server", chat.url, "policy-r1-lora")
    policy = ModelVersion.objects.create(name="policy-r1", kind="policy", checkpoint_path=str(tiny_checkpoint))
    response = api_client(staff).post(f"/api/v1/models/{policy.pk}/served-by/", {"endpoint": "policy-server"}, format="json")
    assert response.status_code == 200 and response.json()["metadata"]["served_by"] == "policy-server"
    run = engine.start_run("generate", campaign=make_campaign("served", prompts=2), params={"models": ["policy-r1"], "max_new_tokens": 4, "n_per_prompt": 1})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    responses = Response.objects.filter(model_version=policy)
    assert responses.count() == 2 and {r.generation_params["endpoint"] for r in responses} == {"policy-server"}
    assert {s.model for s in chat.seen} == {"policy-r1-lora"}
    missing = api_client(staff).post(f"/api/v1/models/{policy.pk}/served-by/", {"endpoint": "nope"}, format="json")
    assert missing.status_code == 400 and missing.json()["field"] == "served_by"


def test_a_lora_policys_serving_commands_name_its_base_and_adapter(staff, tmp_path):
    adapter = tmp_path / "run 7" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/smollm2"}))
    policy = ModelVersion.objects.create(name="helpful-ppo-r1", kind="policy", checkpoint_path=str(tmp_path / "run 7" / "merged"),
                                         metadata={"adapter_dir": str(adapter)})
    commands = api_client(staff).get(f"/api/v1/models/{policy.pk}/serving/").json()
    assert commands["vllm"] == f"vllm serve /models/smollm2 --enable-lora --lora-modules helpful-ppo-r1='{adapter}'"
    assert commands["tgi"] == f"text-generation-launcher --model-id /models/smollm2 --lora-adapters helpful-ppo-r1='{adapter}'"
    full = ModelVersion.objects.create(name="full", kind="policy", checkpoint_path="/ckpt/full")
    assert api_client(staff).get(f"/api/v1/models/{full.pk}/serving/").json()["vllm"] == "vllm serve /ckpt/full --served-model-name full"
    imported = ModelVersion.objects.create(name="imported", kind="policy")
    assert api_client(staff).get(f"/api/v1/models/{imported.pk}/serving/").status_code == 400


def test_the_page_of_the_run_that_made_a_lora_policy_shows_how_to_serve_it(campaign, carol, tmp_path, client):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/smollm2"}))
    run = Run.objects.create(kind="ppo", campaign=campaign, status="succeeded")
    ModelVersion.objects.create(name="helpful-ppo-r1", kind="policy", checkpoint_path=str(tmp_path / "merged"), run=run,
                                metadata={"adapter_dir": str(adapter), "campaign": campaign.slug})
    client.force_login(carol)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert f"vllm serve /models/smollm2 --enable-lora --lora-modules helpful-ppo-r1={adapter}" in page
    assert f"text-generation-launcher --model-id /models/smollm2 --lora-adapters helpful-ppo-r1={adapter}" in page


def test_a_policy_served_through_a_running_vllm_gets_its_adapter_loaded_and_generates_under_its_name(chat, artifacts, tmp_path, tiny_checkpoint):
    from annotate.runs.endpoints import serve_through

    register_endpoint("team-vllm", chat.url, "base")
    adapter = tmp_path / "adapter"
    policy = ModelVersion.objects.create(name="helpful-ppo-r2", kind="policy", checkpoint_path=str(tiny_checkpoint), metadata={"adapter_dir": str(adapter)})
    serve_through(policy, "team-vllm")
    assert chat.adapters == {"helpful-ppo-r2": str(adapter)}
    run = engine.start_run("generate", campaign=make_campaign("lora", prompts=2), params={"models": ["helpful-ppo-r2"], "max_new_tokens": 4})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert {s.model for s in chat.seen} == {"helpful-ppo-r2"}
    assert {r.generation_params["served_model"] for r in Response.objects.filter(model_version=policy)} == {"helpful-ppo-r2"}


def test_a_round_takes_a_served_by_endpoint(db):
    campaign = make_campaign("round", prompts=1)
    with pytest.raises(engine.InvalidParams) as error:
        engine.start_run("round", campaign=campaign, params={"served_by": "nope"})
    assert error.value.field == "served_by"
    register_endpoint("team-vllm", "http://gpu-box/v1", "base")
    assert engine.start_run("round", campaign=campaign, params={"served_by": "team-vllm"}).params["served_by"] == "team-vllm"
    assert "served_by" not in engine.start_run("round", campaign=campaign, params={}).params
