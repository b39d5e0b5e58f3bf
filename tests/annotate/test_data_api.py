"""The read-only data API: prompts, responses, tasks and judgements for researchers and admins."""
from __future__ import annotations

import json

import pytest
from django.test import Client

from annotate.exports.rows import pseudonym
from annotate.models import Judgement, ModelVersion, Prompt, Task
from tests.annotate.test_exports import judge_all
from tests.conftest import api_client

DATA = "/api/v1/campaigns/helpful/data"


@pytest.fixture
def judged(campaign, alice, bob, rita, carol):
    return judge_all(alice, campaign, "m1") + judge_all(bob, campaign, "m2", flags=["unsafe"])


def results(client, path, **params):
    response = client.get(f"{DATA}/{path}/", params)
    assert response.status_code == 200, response.content
    return response.json()["results"]


@pytest.mark.parametrize("path, count", [("prompts", 5), ("responses", 10), ("tasks", 5), ("judgements", 10)])
def test_researchers_read_every_kind_of_row(judged, rita, path, count):
    assert len(results(api_client(rita), path)) == count


def test_rows_carry_what_a_researcher_needs(judged, rita, campaign, alice):
    client = api_client(rita)
    prompt = results(client, "prompts", external_id="p0")[0]
    assert prompt["messages"] == [{"role": "user", "content": "Question 0?"}]
    response = results(client, "responses", prompt_id="p0", model="m1")[0]
    assert (response["prompt_id"], response["model"], response["text"]) == ("p0", "m1", "Answer 0 to 0")
    task = results(client, "tasks", prompt_id="p0")[0]
    assert sorted(task["response_ids"]) == sorted(r["id"] for r in results(client, "responses", prompt_id="p0"))
    judgement = results(client, "judgements", task=task["id"], labeler=pseudonym(campaign.pk, alice.pk))[0]
    assert judgement["ranking"] == Judgement.objects.get(task_id=task["id"], labeler=alice).ranking
    assert client.get(f"{DATA}/judgements/{judgement['id']}/").json()["labeler"] == pseudonym(campaign.pk, alice.pk)


def test_filters(judged, rita, campaign):
    client = api_client(rita)
    ModelVersion.objects.filter(name="m2").update(round=3)
    assert {r["model"] for r in results(client, "responses", round=3)} == {"m2"}
    assert len(results(client, "judgements", flagged="true")) == 5
    assert len(results(client, "judgements", flagged="false")) == 5
    assert len(results(client, "tasks", complete="true")) == 5
    assert results(client, "tasks", complete="false") == []
    assert len(results(client, "tasks", model="m1")) == 5
    assert results(client, "prompts", created_after="2999-01-01T00:00:00Z") == []
    Task.objects.filter(pk=Task.objects.order_by("id").first().pk).update(is_gold=True)
    assert len(results(client, "tasks", is_gold="true")) == 1
    assert len(results(client, "judgements", is_gold="false")) == 8
    assert results(client, "judgements", labeler="nobody") == []


def test_cursor_pages_walk_every_row_once(judged, rita):
    client = api_client(rita)
    seen, url = [], f"{DATA}/judgements/?page_size=3"
    while url:
        page = client.get(url).json()
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert seen == sorted(Judgement.objects.values_list("id", flat=True))


def test_labelers_are_pseudonymous_unless_an_admin_asks(judged, carol, rita):
    assert {r["labeler"] for r in results(api_client(carol), "judgements", identities="real")} == {"alice", "bob"}
    assert {r["labeler"] for r in results(api_client(carol), "judgements", identities="real", labeler="alice")} == {"alice"}
    assert not {"alice", "bob"} & {r["labeler"] for r in results(api_client(rita), "judgements")}
    assert api_client(rita).get(f"{DATA}/judgements/", {"identities": "real"}).status_code == 403
    assert api_client(carol).get(f"{DATA}/judgements/", {"identities": "all"}).status_code == 400


@pytest.mark.parametrize("who, expected", [("carol", 200), ("rita", 200), ("alice", 403), ("mallory", 404)])
@pytest.mark.parametrize("path", ["prompts", "responses", "tasks", "judgements"])
def test_who_may_read(judged, request, mallory, who, expected, path):
    assert api_client(request.getfixturevalue(who)).get(f"{DATA}/{path}/").status_code == expected


def test_rows_of_another_campaign_are_404(judged, rita, mallory):
    other_prompt = Prompt.objects.get(campaign__slug="other", external_id="p0")
    other_task = Task.objects.filter(campaign__slug="other").first()
    client = api_client(rita)
    assert client.get(f"{DATA}/prompts/{other_prompt.pk}/").status_code == 404
    assert client.get(f"{DATA}/tasks/{other_task.pk}/").status_code == 404
    assert client.get("/api/v1/campaigns/other/data/prompts/").status_code == 404


def test_anonymous_reads_are_refused(judged):
    assert Client().get(f"{DATA}/judgements/").status_code in (401, 403)


@pytest.mark.parametrize("path", ["prompts", "responses", "tasks", "judgements"])
def test_a_page_costs_the_same_queries_however_many_rows(campaign, rita, alice, bob, path, django_assert_max_num_queries):
    judge_all(alice, campaign)
    judge_all(bob, campaign)
    client = api_client(rita)
    with django_assert_max_num_queries(4):  # token, membership, the page, (the tasks' responses); not one per row
        assert len(results(client, path, page_size=100)) >= 5


def test_the_openapi_schema_describes_exports_snapshots_and_data(db):
    schema = json.loads(Client().get("/api/schema/", HTTP_ACCEPT="application/json").content)
    paths = schema["paths"]
    for path in ["export/", "snapshots/", "snapshots/{name}/download/", "data/prompts/", "data/responses/", "data/tasks/",
                 "data/judgements/", "data/judgements/{id}/"]:
        assert f"/api/v1/campaigns/{{slug}}/{path}" in paths, path
    export = {p["name"]: p for p in paths["/api/v1/campaigns/{slug}/export/"]["get"]["parameters"]}
    assert export["shape"]["schema"]["enum"] == ["pairs", "rankings", "tasks"]
    assert {"format", "since", "until", "models", "round", "min_gold_accuracy", "min_agreement", "flagged",
            "include_paused", "include_gold", "include_surplus", "identities"} <= set(export)
    judgements = {p["name"] for p in paths["/api/v1/campaigns/{slug}/data/judgements/"]["get"]["parameters"]}
    assert {"labeler", "flagged", "is_surplus", "task", "created_after", "cursor", "page_size", "identities"} <= judgements
    assert "application/vnd.apache.parquet" in paths["/api/v1/campaigns/{slug}/export/"]["get"]["responses"]["200"]["content"]
