"""Cross-campaign holes closed: runs use only their campaign's models, the registry shows a user only their
campaigns' models, run records keep server detail for staff, and live events go to admins and researchers."""
from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from annotate.models import ModelVersion, Run
from config.asgi import application
from tests.conftest import api_client, join, make_user


@pytest.fixture
def models(campaign):
    """A reward model and a policy of each campaign, and a staff-registered reward model of none."""
    made = {}
    for slug in ("helpful", "other"):
        made[f"{slug}-rm"] = ModelVersion.objects.create(name=f"{slug}-rm", kind="reward", checkpoint_path=f"/srv/art/{slug}-rm",
                                                         metadata={"campaign": slug, "snapshot": {"hash": "abc"}})
        made[f"{slug}-policy"] = ModelVersion.objects.create(name=f"{slug}-policy", kind="policy", checkpoint_path=f"/srv/art/{slug}-p",
                                                             round=1, metadata={"campaign": slug, "adapter_dir": f"/srv/art/{slug}-p/adapter"})
    made["shared-rm"] = ModelVersion.objects.create(name="shared-rm", kind="reward", checkpoint_path="/srv/art/shared-rm")
    made["base"] = ModelVersion.objects.create(name="plain-base", kind="base", checkpoint_path="/srv/art/base")
    return made


def start(user, kind, params):
    return api_client(user).post("/api/v1/campaigns/helpful/runs/", {"kind": kind, "params": params}, format="json")


# Issue 12, item 3: a run names only its own campaign's models


@pytest.mark.parametrize(
    "kind, params, field",
    [
        ("prioritize", {"reward_model": "other-rm"}, "reward_model"),
        ("drift", {"reward_model": "other-rm"}, "reward_model"),
        ("generate", {"models": ["other-policy"]}, "models"),
        ("generate", {"models": ["SmolLM2-135M-Instruct"], "reward_model": "other-rm"}, "reward_model"),
        ("ppo", {"policy": "other-policy", "reward_model": "helpful-rm"}, "policy"),
        ("ppo", {"reward_model": "other-rm"}, "reward_model"),
        ("rloo", {"reward_model": "other-rm"}, "reward_model"),
        ("sft", {"policy": "other-policy"}, "policy"),
        ("reward", {"base_model": "other-policy"}, "base_model"),
        ("optimize", {"model": "other-policy", "methods": ["prune"]}, "model"),
        ("optimize", {"model": "helpful-policy", "methods": ["prune"], "reward_model": "other-rm"}, "reward_model"),
    ],
)
def test_a_run_cannot_use_another_campaigns_model(carol, models, kind, params, field):
    response = start(carol, kind, params)
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == field and "another campaign" in response.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    "kind, params",
    [
        ("drift", {"reward_model": "helpful-rm"}),
        ("prioritize", {"reward_model": "shared-rm"}),
        ("generate", {"models": ["SmolLM2-135M-Instruct", "plain-base", "helpful-policy"]}),
        ("ppo", {"policy": "helpful-policy", "reward_model": "shared-rm"}),
    ],
)
def test_own_models_the_default_base_and_staff_models_of_no_campaign_stay_usable(carol, models, kind, params):
    response = start(carol, kind, params)
    assert response.status_code == 201, response.json()


def test_the_run_forms_offer_only_this_campaigns_models(carol, models):
    client = Client()
    client.force_login(carol)
    for url in ("/c/helpful/", "/c/helpful/optimized/"):
        page = client.get(url).content.decode()
        assert "helpful-policy" in page and "plain-base" in page and "other-policy" not in page, url


# Issue 12, item 11: the registry shows a user only what is theirs; server paths only to staff


def listed(user) -> dict:
    return {m["name"]: m for m in api_client(user).get("/api/v1/models/").json()}


def test_the_registry_shows_readers_their_campaigns_models_and_others_only_models_of_no_campaign(models, alice, rita, mallory):
    no_campaign = {"plain-base", "shared-rm"}  # imported names (m1, m2: no checkpoint) came with a campaign's data
    assert set(listed(rita)) == {"helpful-rm", "helpful-policy"} | no_campaign
    assert set(listed(alice)) == no_campaign
    assert set(listed(mallory)) == no_campaign
    body = json.dumps(listed(rita))
    assert "checkpoint_path" not in body and "/srv/" not in body
    assert listed(rita)["helpful-policy"]["metadata"]["adapter_dir"] == "…/adapter"


def test_staff_see_every_model_with_its_path(models):
    staff = make_user("sam", is_staff=True)
    everything = listed(staff)
    assert {m.name for m in models.values()} <= set(everything)
    assert everything["other-rm"]["checkpoint_path"] == "/srv/art/other-rm"


# Low: run records show researchers a short error, never tracebacks or server paths


FAILED_RUN = {
    "error": 'OSError: cannot read /srv/arbiter/artifacts/runs/9/model.safetensors\n\nTraceback (most recent call last):\n'
             '  File "/srv/arbiter/annotate/jobs/engine.py", line 150, in execute_run\nOSError: boom',
    "artifacts": {"model": "/srv/arbiter/artifacts/runs/9/model"},
    "log_tail": "12:00:00 saving to /srv/arbiter/artifacts/runs/9",
}


def test_researchers_see_a_short_error_staff_the_full_text(campaign, rita, carol):
    run = Run.objects.create(kind="reward", campaign=campaign, status="failed", **FAILED_RUN)
    shown = api_client(rita).get(f"/api/v1/runs/{run.pk}/").json()
    assert shown["error"] == "OSError: cannot read …/model.safetensors"
    assert shown["artifacts"] == {"model": "…/model"}
    assert "/srv/" not in json.dumps(shown)
    page = Client()
    page.force_login(rita)
    html = page.get(f"/runs/{run.pk}/").content.decode()
    assert "Traceback" not in html and "/srv/" not in html and "cannot read …/model.safetensors" in html
    listed_runs = api_client(rita).get("/api/v1/campaigns/helpful/runs/").json()
    assert "/srv/" not in json.dumps(listed_runs)
    assert api_client(carol).get(f"/api/v1/runs/{run.pk}/").json()["error"] == FAILED_RUN["error"]  # carol is staff


# Low: labelers do not receive the campaign's live judgement events


@pytest.mark.django_db(transaction=True)
def test_labelers_are_refused_the_live_events(campaign, alice, rita):
    def connects(user) -> bool:
        client = Client()
        client.force_login(user)
        headers = [(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]

        async def scenario():
            ws = WebsocketCommunicator(application, "/ws/campaigns/helpful/", headers=headers)
            connected, _ = await ws.connect()
            await ws.disconnect()
            return connected

        return async_to_sync(scenario)()

    assert connects(rita)
    assert not connects(alice)
    admin = join(make_user("dana"), campaign, "admin")
    assert connects(admin)
