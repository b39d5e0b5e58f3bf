"""Background runs: lifecycle through a real db_worker, failure, cancel, a killed worker, and generation into the queue."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from annotate.jobs import engine
from annotate.models import ModelVersion, Response, Run, Task
from tests.conftest import join, make_campaign, make_user

# Real commits: the worker runs in this process and would drop a connection held in a test transaction.
pytestmark = pytest.mark.django_db(transaction=True)


def work_off_queue():
    call_command("db_worker", "--batch", "--queue-name", "*", "--no-startup-delay", stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def tiny(db, tiny_checkpoint):
    return ModelVersion.objects.create(name="tiny-policy", kind="policy", checkpoint_path=str(tiny_checkpoint))


def generate_params(**extra):
    return {"models": ["tiny-policy"], "n_per_prompt": 2, "max_new_tokens": 8, "temperature": 1.0, "seed": 1, **extra}


def test_a_generation_run_goes_from_queued_to_succeeded_and_fills_the_queue(tiny, artifacts):
    campaign = make_campaign("gen", prompts=3)
    before = Task.objects.filter(campaign=campaign).count()
    run = engine.start_run("generate", campaign=campaign, params=generate_params(), user=None)
    assert Run.objects.get(pk=run.pk).status == "queued"
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.progress == 1.0 and run.started_at and run.finished_at
    new = Response.objects.filter(model_version=tiny)
    assert new.count() == 3 * 2
    assert all(r.generation_params["max_new_tokens"] == 8 and "finished_with_eos" in r.generation_params for r in new)
    assert Task.objects.filter(campaign=campaign).count() == before + 3  # two new responses per prompt make one pair each
    assert run.result == {"responses": 6, "tasks_built": 3}


def test_head_to_head_pairs_each_new_response_with_the_baseline(tiny, artifacts):
    campaign = make_campaign("h2h", prompts=2, models=("old", "older"))
    run = engine.start_run("generate", campaign=campaign, params=generate_params(n_per_prompt=1, head_to_head_with="old"))
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    new_tasks = Task.objects.filter(campaign=campaign, responses__model_version=tiny).distinct()
    assert new_tasks.count() == 2
    for task in new_tasks:
        assert sorted(task.responses.values_list("model_version__name", flat=True)) == ["old", "tiny-policy"]


def test_a_checkpoint_that_does_not_load_fails_the_run_clearly(artifacts, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    ModelVersion.objects.create(name="broken", kind="policy", checkpoint_path=str(broken))
    campaign = make_campaign("bad", prompts=1)
    run = engine.start_run("generate", campaign=campaign, params={"models": ["broken"]})
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "failed" and "does not load" in run.error
    assert not Response.objects.filter(model_version__name="broken").exists()


def test_a_queued_run_is_cancelled_at_once_and_never_runs(tiny, artifacts):
    campaign = make_campaign("cq", prompts=1)
    run = engine.start_run("generate", campaign=campaign, params=generate_params())
    engine.request_cancel(run)
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "cancelled" and run.started_at is None
    assert not Response.objects.filter(model_version=tiny).exists()


def test_a_running_run_stops_at_its_next_step_when_cancelled(tiny, artifacts):
    campaign = make_campaign("cr", prompts=4)
    run = engine.start_run("generate", campaign=campaign, params=generate_params(batch_size=2))
    Run.objects.filter(pk=run.pk).update(cancel_requested=True)  # as if cancel came right after the start
    work_off_queue()
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert Response.objects.filter(model_version=tiny).count() < 4 * 2


@pytest.mark.parametrize(
    "params, field",
    [
        ({"models": []}, "models"),
        ({"models": ["nope"]}, "models"),
        ({"models": ["tiny-policy"], "max_new_tokens": -5}, "max_new_tokens"),
        ({"models": ["tiny-policy"], "temperature": 3.5}, "temperature"),
        ({"models": ["tiny-policy"], "top_p": 0}, "top_p"),
        ({"models": ["tiny-policy"], "n_per_prompt": "two"}, "n_per_prompt"),
        ({"models": ["tiny-policy"], "colour": "red"}, "colour"),
        ({"models": ["tiny-policy"], "head_to_head_with": "ghost"}, "head_to_head_with"),
    ],
)
def test_bad_generation_params_are_a_400_naming_the_field(tiny, params, field):
    from tests.conftest import api_client

    campaign = make_campaign("p400", prompts=1)
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    response = api_client(carol).post("/api/v1/campaigns/p400/runs/", {"kind": "generate", "params": params}, format="json")
    assert response.status_code == 400 and response.json()["field"] == field, response.content
    assert not Run.objects.exists()


def test_runs_api_start_show_cancel_and_permissions(tiny, artifacts):
    from tests.conftest import api_client

    campaign = make_campaign("api", prompts=1)
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    alice = join(make_user("alice"), campaign, "labeler")
    rita = join(make_user("rita"), campaign, "researcher")
    assert api_client(alice).post("/api/v1/campaigns/api/runs/", {"kind": "generate", "params": generate_params()}, format="json").status_code == 403
    assert api_client(carol).post("/api/v1/campaigns/api/runs/", {"kind": "paint", "params": {}}, format="json").json()["field"] == "kind"
    created = api_client(carol).post("/api/v1/campaigns/api/runs/", {"kind": "generate", "params": generate_params()}, format="json")
    assert created.status_code == 201
    run_id = created.json()["id"]
    shown = api_client(rita).get(f"/api/v1/runs/{run_id}/").json()
    assert shown["status"] == "queued" and shown["params"]["n_per_prompt"] == 2
    assert api_client(alice).get(f"/api/v1/runs/{run_id}/").status_code == 403
    assert api_client(rita).post(f"/api/v1/runs/{run_id}/cancel/").status_code == 403
    assert api_client(carol).post(f"/api/v1/runs/{run_id}/cancel/").json()["status"] == "cancelled"
    assert api_client(carol).post(f"/api/v1/runs/{run_id}/cancel/").status_code == 409
    names = [m["name"] for m in api_client(alice).get("/api/v1/models/").json()]
    assert "tiny-policy" in names


def test_a_run_without_heartbeat_is_marked_failed():
    run = Run.objects.create(kind="generate", status="running", heartbeat_at=timezone.now() - timedelta(minutes=5))
    fresh = Run.objects.create(kind="generate", status="running", heartbeat_at=timezone.now())
    assert engine.fail_stale_runs() == 1
    run.refresh_from_db()
    fresh.refresh_from_db()
    assert run.status == "failed" and "heartbeat" in run.error and fresh.status == "running"


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def test_a_killed_worker_leaves_a_failed_run_and_consistent_data(tiny_checkpoint, tmp_path):
    ModelVersion.objects.create(name="tiny-policy", kind="policy", checkpoint_path=str(tiny_checkpoint))
    campaign = make_campaign("kill", prompts=60)
    run = engine.start_run("generate", campaign=campaign, params=generate_params(n_per_prompt=2, max_new_tokens=24, batch_size=4))
    env = {**os.environ, "DATABASE_URL": _database_url(), "ARTIFACTS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--queue-name", "*", "--no-startup-delay", "-v0"],
        cwd=settings.BASE_DIR, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while Response.objects.filter(model_version__name="tiny-policy").count() < 8:
            assert time.monotonic() < deadline, "the worker stored nothing in time"
            assert worker.poll() is None, "the worker exited early"
            time.sleep(0.2)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    run.refresh_from_db()
    assert run.status == "running"  # nobody told the database
    assert engine.fail_stale_runs(now=timezone.now() + timedelta(minutes=2)) == 1
    run.refresh_from_db()
    assert run.status == "failed"
    stored = Response.objects.filter(model_version__name="tiny-policy")
    assert 8 <= stored.count() < 60 * 2
    # whole batches only: every stored response is in exactly one task, every task is complete
    assert stored.count() % 4 == 0
    assert all(t.n == 2 for t in Task.objects.filter(campaign=campaign).annotate(n=Count("responses")))
    assert not stored.annotate(n=Count("tasks")).exclude(n=1).exists()
