"""REST API v1: every endpoint, its bad inputs, and who may call it."""
from __future__ import annotations

import json

import pytest
from django.test import override_settings

from annotate.models import Campaign, Judgement, Membership, Prompt, Response
from tests.conftest import api_client, make_user


def lease(client, slug="helpful"):
    response = client.get(f"/api/v1/campaigns/{slug}/tasks/next/")
    assert response.status_code == 200, response.content
    return response.json()


def ranking_of(body):
    ids = [r["id"] for r in body["responses"]]
    return [[ids[1]], [ids[0]]]


# Campaigns and members


def test_staff_create_a_campaign_and_become_its_admin(db):
    carol = make_user("carol", is_staff=True)
    body = {"name": "Safety", "slug": "safety", "task_type": "ranking", "responses_per_task": 4, "overlap": 3, "instructions": "# Be careful"}
    response = api_client(carol).post("/api/v1/campaigns/", body, format="json")
    assert response.status_code == 201, response.content
    assert Membership.objects.get(campaign__slug="safety", user=carol).role == "admin"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "X", "slug": "x", "task_type": "pairwise", "responses_per_task": 3}, "responses_per_task"),
        ({"name": "X", "slug": "x", "task_type": "ranking", "responses_per_task": 9}, "responses_per_task"),
        ({"name": "X", "slug": "x", "task_type": "ranking", "overlap": 0}, "overlap"),
        ({"name": "X", "slug": "not a slug"}, "slug"),
        ({"name": "X", "slug": "x", "task_type": "vote"}, "task_type"),
    ],
)
def test_bad_campaign_settings_name_the_field(db, body, field):
    carol = make_user("carol", is_staff=True)
    response = api_client(carol).post("/api/v1/campaigns/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Campaign.objects.exists()


def test_a_duplicate_slug_is_a_conflict(carol, campaign):
    response = api_client(carol).post("/api/v1/campaigns/", {"name": "Again", "slug": campaign.slug}, format="json")
    assert response.status_code == 409


def test_labelers_cannot_create_campaigns(alice):
    response = api_client(alice).post("/api/v1/campaigns/", {"name": "Mine", "slug": "mine"}, format="json")
    assert response.status_code == 403


def test_admins_add_members(carol, campaign):
    make_user("dave")
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/members/", {"username": "dave", "role": "labeler"}, format="json")
    assert response.status_code == 201
    assert Membership.objects.get(user__username="dave").role == "labeler"


def test_adding_an_unknown_user_or_role_fails_clearly(carol, campaign):
    client = api_client(carol)
    assert "username" in client.post(f"/api/v1/campaigns/{campaign.slug}/members/", {"username": "ghost", "role": "labeler"}, format="json").json()
    make_user("dave")
    assert "role" in client.post(f"/api/v1/campaigns/{campaign.slug}/members/", {"username": "dave", "role": "boss"}, format="json").json()


# Imports


def test_prompts_import_all_or_nothing_with_row_numbers(carol, campaign):
    rows = [
        {"external_id": "new-1", "text": "Hello?"},
        {"external_id": "new-2", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "context": ["passage"], "metadata": {"src": "x"}},
        {"external_id": "new-3", "messages": [{"role": "robot", "content": "?"}]},
        {"text": "no id"},
    ]
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/prompts/", rows, format="json")
    assert response.status_code == 400
    assert [e["row"] for e in response.json()["errors"]] == [2, 3]
    assert not Prompt.objects.filter(external_id__startswith="new-").exists()
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/prompts/", rows[:2], format="json")
    assert response.json() == {"created": 2, "errors": []}
    assert Prompt.objects.get(external_id="new-2").context == [{"title": "", "text": "passage"}]


def test_a_duplicate_external_id_is_a_row_error(carol, campaign):
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/prompts/", [{"external_id": "p0", "text": "again"}], format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["row"] == 0


def test_responses_build_tasks_when_a_prompt_has_k(carol, campaign):
    client = api_client(carol)
    client.post(f"/api/v1/campaigns/{campaign.slug}/prompts/", [{"external_id": "q", "text": "Why?"}], format="json")
    one = client.post(f"/api/v1/campaigns/{campaign.slug}/responses/", [{"prompt": "q", "model": "m1", "text": "Because."}], format="json")
    assert one.json()["tasks_built"] == 0
    two = client.post(f"/api/v1/campaigns/{campaign.slug}/responses/", [{"prompt": "q", "model": "m2", "text": "Why not."}], format="json")
    assert two.status_code == 201 and two.json()["tasks_built"] == 1


def test_responses_to_unknown_prompts_are_rejected_whole(carol, campaign):
    before = Response.objects.count()
    rows = [{"prompt": "p0", "model": "m1", "text": "fine"}, {"prompt": "nope", "model": "m1", "text": "x"}, {"prompt": "p0", "model": "", "text": "x"}]
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/responses/", rows, format="json")
    assert response.status_code == 400
    assert [e["row"] for e in response.json()["errors"]] == [1, 2]
    assert Response.objects.count() == before


def test_malformed_json_is_a_400(carol, campaign):
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/prompts/", "[{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_a_body_that_is_not_a_list_is_a_400(carol, campaign):
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/prompts/", {"external_id": "x"}, format="json")
    assert response.status_code == 400 and "list" in response.json()["detail"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_an_oversize_body_is_refused(carol, campaign):
    rows = [{"external_id": f"big{i}", "text": "x" * 100} for i in range(50)]
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/prompts/", rows, format="json")
    assert response.status_code in (400, 413)
    assert not Prompt.objects.filter(external_id__startswith="big").exists()


# Labeling


def test_next_then_submit_then_replay(alice, campaign):
    client = api_client(alice)
    body = lease(client)
    assert set(body) == {"task_id", "prompt", "responses", "lease_expires_at"}
    assert all(set(r) == {"id", "text"} for r in body["responses"])  # blind: no model names
    url = f"/api/v1/tasks/{body['task_id']}/judgements/"
    payload = {"ranking": ranking_of(body), "rationale": "B is clearer", "flags": ["unsafe"], "time_spent_ms": 4200}
    first = client.post(url, payload, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert first.status_code == 201, first.content
    replay = client.post(url, payload, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert replay.status_code == 201 and replay.json() == first.json()
    assert Judgement.objects.count() == 1
    again = client.post(url, payload, format="json", HTTP_IDEMPOTENCY_KEY="other")
    assert again.status_code == 409


def test_next_is_204_when_nothing_is_left(alice, campaign):
    client = api_client(alice)
    for _ in range(campaign.tasks.count()):
        body = lease(client)
        assert client.post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": ranking_of(body)}, format="json").status_code == 201
    assert client.get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").status_code == 204


@pytest.mark.parametrize(
    "ranking, expected",
    [
        (lambda ids: [[ids[0]], [123456789]], "not in this task"),
        (lambda ids: [[ids[0]]], "misses"),
        (lambda ids: [[ids[0]], [ids[0]], [ids[1]]], "repeats"),
        (lambda ids: "first", "non-empty list"),
    ],
)
def test_bad_rankings_get_a_400_naming_the_field(alice, campaign, ranking, expected):
    client = api_client(alice)
    body = lease(client)
    ids = [r["id"] for r in body["responses"]]
    response = client.post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": ranking(ids)}, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == "ranking" and expected in response.json()["detail"]
    assert not Judgement.objects.exists()


def test_unknown_flags_are_refused(alice, campaign):
    client = api_client(alice)
    body = lease(client)
    response = client.post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": ranking_of(body), "flags": ["boring"]}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "flags"


def test_a_judgement_on_a_task_not_leased_to_you_is_403(alice, bob, campaign):
    body = lease(api_client(alice))
    response = api_client(bob).post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": ranking_of(body)}, format="json")
    assert response.status_code == 403 and response.json()["code"] == "not_leased"


def test_skip_gives_the_next_task(alice, campaign):
    client = api_client(alice)
    first = lease(client)
    assert client.post(f"/api/v1/tasks/{first['task_id']}/skip/").status_code == 204
    assert lease(client)["task_id"] != first["task_id"]


def test_progress(alice, campaign):
    client = api_client(alice)
    body = lease(client)
    client.post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": ranking_of(body)}, format="json")
    progress = client.get(f"/api/v1/campaigns/{campaign.slug}/progress/").json()
    assert progress["judgements_received"] == 1 and progress["labeler_submitted"] == 1 and progress["tasks"] == 5


# Permission matrix: who gets what on campaign "helpful"

ENDPOINTS = {
    "detail": ("get", "/api/v1/campaigns/helpful/", None),
    "members": ("post", "/api/v1/campaigns/helpful/members/", {"username": "alice", "role": "labeler"}),
    "prompts": ("post", "/api/v1/campaigns/helpful/prompts/", [{"external_id": "perm", "text": "?"}]),
    "responses": ("post", "/api/v1/campaigns/helpful/responses/", [{"prompt": "p0", "model": "m9", "text": "?"}]),
    "next": ("get", "/api/v1/campaigns/helpful/tasks/next/", None),
    "progress": ("get", "/api/v1/campaigns/helpful/progress/", None),
}
EXPECTED = {
    # role:        detail members prompts responses next progress
    "carol": (200, 201, 201, 201, 200, 200),
    "rita": (200, 403, 403, 403, 403, 200),
    "alice": (200, 403, 403, 403, 200, 200),
    "mallory": (404, 404, 404, 404, 404, 404),
}


@pytest.mark.parametrize("who", list(EXPECTED))
def test_permission_matrix(request, who, alice, carol, rita, mallory):
    client = api_client(request.getfixturevalue(who))
    got = tuple(
        getattr(client, method)(url, data, format="json").status_code for method, url, data in ENDPOINTS.values()
    )
    assert got == EXPECTED[who]


def test_anonymous_requests_are_refused(campaign):
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/campaigns/helpful/tasks/next/").status_code in (401, 403)


def test_a_labeler_of_another_campaign_cannot_judge_or_skip_here(alice, mallory, campaign):
    body = lease(api_client(alice))
    client = api_client(mallory)
    assert client.post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": ranking_of(body)}, format="json").status_code == 404
    assert client.post(f"/api/v1/tasks/{body['task_id']}/skip/").status_code == 404


def test_the_campaign_list_shows_only_yours(alice, mallory, campaign):
    assert [c["slug"] for c in api_client(mallory).get("/api/v1/campaigns/").json()] == ["other"]


def test_the_openapi_schema_describes_the_api(db):
    from django.test import Client

    response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    assert "/api/v1/tasks/{task_id}/judgements/" in paths and "/api/v1/campaigns/{slug}/tasks/next/" in paths


@pytest.mark.parametrize("payload", [[1, 2], {"rationale": "no ranking"}])
def test_a_submission_without_a_ranking_object_is_a_400(alice, campaign, payload):
    body = lease(api_client(alice))
    response = api_client(alice).post(f"/api/v1/tasks/{body['task_id']}/judgements/", payload, format="json")
    assert response.status_code == 400 and response.json()["field"] == "ranking"
    assert not Judgement.objects.exists()


def test_the_labeling_endpoints_take_json_only(alice, campaign):
    body = lease(api_client(alice))
    response = api_client(alice).post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": "x"})  # multipart form
    assert response.status_code == 415 and not Judgement.objects.exists()


def test_a_wrong_token_or_a_deactivated_user_is_a_401(alice, campaign):
    from rest_framework.test import APIClient

    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert stranger.get("/api/v1/campaigns/helpful/tasks/next/").status_code == 401
    client = api_client(alice)
    alice.is_active = False
    alice.save()
    response = client.get("/api/v1/campaigns/helpful/tasks/next/")
    assert response.status_code == 401 and "inactive" in response.json()["detail"]


def test_a_task_id_beyond_any_database_integer_is_a_404(alice, campaign):
    response = api_client(alice).post("/api/v1/tasks/99999999999999999999/judgements/", {"ranking": [[1], [2]]}, format="json")
    assert response.status_code == 404
