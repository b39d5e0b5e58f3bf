"""Researchers train: they start and cancel training runs in their campaigns; generation, imports, settings, gold and labelers stay with admins."""
from __future__ import annotations

import pytest
from django.test import Client

from annotate.models import Run
from tests.conftest import api_client

REWARD = {"base_model": "SmolLM2-135M-Instruct", "epochs": 1, "learning_rate": 1e-4, "aggregation": "all", "use_lora": "on"}


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_researcher_starts_a_reward_run_from_the_campaign_page(rita, campaign):
    page = browser(rita).get(f"/c/{campaign.slug}/").content.decode()
    assert "Train reward model" in page and "Run a round" in page and "Start generation" not in page
    response = browser(rita).post(f"/c/{campaign.slug}/runs/reward/start/", REWARD)
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert (run.kind, run.created_by) == ("reward", rita)


def test_a_researcher_cancels_their_training_run_but_not_a_generation(rita, carol, campaign):
    reward = Run.objects.create(kind="reward", campaign=campaign, created_by=rita)
    generate = Run.objects.create(kind="generate", campaign=campaign, created_by=carol)
    assert "Cancel</button>" in browser(rita).get(f"/runs/{reward.pk}/").content.decode()
    assert browser(rita).post(f"/runs/{reward.pk}/cancel/").status_code == 302
    assert api_client(rita).post(f"/api/v1/runs/{generate.pk}/cancel/").status_code == 403
    reward.refresh_from_db()
    generate.refresh_from_db()
    assert reward.status == "cancelled" and generate.status == "queued"


@pytest.mark.parametrize("kind", ["reward", "sft", "dpo", "ppo", "rloo", "round", "optimize", "drift", "prioritize"])
def test_researchers_may_start_every_training_kind_over_the_api(rita, campaign, kind):
    # empty params: the kind's own validation answers (400 naming a field) rather than the permission check (403)
    response = api_client(rita).post(f"/api/v1/campaigns/{campaign.slug}/runs/", {"kind": kind, "params": {}}, format="json")
    assert response.status_code in (201, 400), response.content
    assert response.status_code == 201 or "field" in response.json()


def test_generation_and_the_admin_pages_stay_with_admins(rita, alice, campaign):
    assert api_client(rita).post(f"/api/v1/campaigns/{campaign.slug}/runs/", {"kind": "generate", "params": {}}, format="json").status_code == 403
    assert browser(rita).post(f"/c/{campaign.slug}/generate/", {}).status_code == 403
    for page in ("settings", "import", "tasks", "labelers"):
        assert browser(rita).get(f"/c/{campaign.slug}/{page}/").status_code == 403
    assert api_client(alice).post(f"/api/v1/campaigns/{campaign.slug}/runs/", {"kind": "reward", "params": {}}, format="json").status_code == 403
    assert browser(alice).post(f"/c/{campaign.slug}/runs/reward/start/", REWARD).status_code == 403
