"""Hostile input over HTTP: oversize lists, out-of-range numbers, NUL, lone surrogates, deep nesting,
non-ASCII digits. Each is a 400 (or 409) naming the field, never a 500."""
from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from annotate.jobs.engine import InvalidParams
from annotate.models import Judgement, ModelVersion, Run, Task
from annotate.runs import reward
from tests.conftest import api_client


def lease(client, slug="helpful"):
    response = client.get(f"/api/v1/campaigns/{slug}/tasks/next/")
    assert response.status_code == 200, response.content
    return response.json()


def submit(client, task_id, body, key=None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(f"/api/v1/tasks/{task_id}/judgements/", json.dumps(body), content_type="application/json", **headers)


def raw_post(client, path, text):
    return client.post(path, text.encode("utf-8", "surrogatepass"), content_type="application/json")


# Lists and numbers


def test_half_a_megabyte_of_repeated_valid_ids_is_refused_at_the_cap(alice):
    client = api_client(alice)
    task = lease(client)
    first = task["responses"][0]["id"]
    body = {"ranking": [[first] * 170_000, [task["responses"][1]["id"]]]}
    assert len(json.dumps(body)) > 500_000
    response = submit(client, task["task_id"], body)
    assert response.status_code == 400
    assert response.json()["field"] == "ranking"
    assert "more than 64 response ids" in response.json()["detail"]
    assert len(response.content) < 300
    assert not Judgement.objects.exists()


@pytest.mark.parametrize("body, field", [
    ({"flags": ["unsafe"] * 17}, "flags"),
    ({"ratings": {str(i): {} for i in range(65)}}, "ratings"),
    ({"ratings": {"²": {"helpful": 3}}}, "ratings"),
])
def test_oversize_or_odd_lists_name_the_field(alice, body, field):
    alice_campaign = alice.memberships.get().campaign
    alice_campaign.criteria = [{"name": "helpful", "label": "Helpful", "min": 1, "max": 7}]
    alice_campaign.save()
    client = api_client(alice)
    task = lease(client)
    ids = [r["id"] for r in task["responses"]]
    response = submit(client, task["task_id"], {"ranking": [[ids[0]], [ids[1]]], **body})
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field


@pytest.mark.parametrize("value", [2**31, 2**32 + 5, 2**63, -1])
def test_time_spent_beyond_the_column_is_a_400(alice, value):
    client = api_client(alice)
    task = lease(client)
    ids = [r["id"] for r in task["responses"]]
    response = submit(client, task["task_id"], {"ranking": [[ids[0]], [ids[1]]], "time_spent_ms": value}, key="k1")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "time_spent_ms"
    assert not Judgement.objects.exists()


def test_the_largest_time_spent_is_stored_and_replayed(alice):
    client = api_client(alice)
    task = lease(client)
    ids = [r["id"] for r in task["responses"]]
    body = {"ranking": [[ids[0]], [ids[1]]], "time_spent_ms": 2**31 - 1}
    assert submit(client, task["task_id"], body, key="k1").status_code == 201
    replay = submit(client, task["task_id"], body, key="k1")
    assert replay.status_code == 201
    assert replay.json()["time_spent_ms"] == 2**31 - 1


def test_a_reused_idempotency_key_with_another_body_is_a_conflict(alice):
    client = api_client(alice)
    task = lease(client)
    ids = [r["id"] for r in task["responses"]]
    assert submit(client, task["task_id"], {"ranking": [[ids[0]], [ids[1]]]}, key="k1").status_code == 201
    for changed in ({"ranking": [[ids[1]], [ids[0]]]}, {"ranking": [[ids[0]], [ids[1]]], "rationale": "other"},
                    {"ranking": [[ids[0]], [ids[1]]], "flags": ["unsafe"]}):
        response = submit(client, task["task_id"], changed, key="k1")
        assert response.status_code == 409, changed
        assert response.json()["field"] == "idempotency_key"
    assert submit(client, task["task_id"], {"ranking": [[ids[0]], [ids[1]]]}, key="k1").status_code == 201
    assert Judgement.objects.get().ranking == [[ids[0]], [ids[1]]]


def test_a_model_name_too_long_for_the_registry_is_refused_before_the_run_is_queued(carol, campaign):
    with pytest.raises(InvalidParams) as refused:
        reward.validate_params(campaign, {"name": "r" * 201})
    assert refused.value.field == "name"
    response = api_client(carol).post(f"/api/v1/campaigns/{campaign.slug}/runs/", {"kind": "reward", "params": {"name": "r" * 201}}, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == "name"
    assert not Run.objects.exists()


# NUL, surrogates, nesting, digits: one parser for the API, one middleware for the pages


@pytest.mark.parametrize("text, field", [
    ('{"ranking": [[1], [2]], "rationale": "a\\u0000b"}', "rationale"),
    ('{"ranking": [[1], [2]], "rationale": "\\ud800"}', "rationale"),
    ('{"ranking": [[1], [2]], "flags": ["\\udfff"]}', "flags[0]"),
    ('{"ranking": [[1], [2]], "ratings": {"1\\u0000": {}}}', "ratings"),
])
def test_nul_and_lone_surrogates_in_json_are_a_400_naming_the_field(alice, text, field):
    task = lease(api_client(alice))
    response = raw_post(api_client(alice), f"/api/v1/tasks/{task['task_id']}/judgements/", text)
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert response.json()["code"] == "bad_input"


@pytest.mark.parametrize("depth", [33, 100_000])
def test_deeply_nested_json_is_a_400(alice, depth):
    task = lease(api_client(alice))
    response = raw_post(api_client(alice), f"/api/v1/tasks/{task['task_id']}/judgements/", '{"ranking": ' + "[" * depth + "]" * depth + "}")
    assert response.status_code == 400, response.content
    assert "nested deeper" in response.json()["detail"]


def test_nul_in_a_query_string_or_an_html_form_is_a_400(alice, carol, campaign):
    api = api_client(carol)
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/data/tasks/", {"prompt": "a\x00"}).status_code == 400
    browser = Client()
    browser.force_login(carol)
    response = browser.post(f"/c/{campaign.slug}/settings/", {"name": "x\x00y"})
    assert response.status_code == 400
    assert b"name contains a NUL" in response.content
    assert browser.get(f"/c/{campaign.slug}/tasks/", {"q": "²"}).status_code == 200


def test_unicode_digits_in_form_fields_are_not_numbers(alice, carol, campaign):
    browser = Client()
    browser.force_login(carol)
    task = Task.objects.filter(campaign=campaign).first()
    response = browser.post(f"/c/{campaign.slug}/tasks/{task.pk}/gold/", {f"place-{slot.response_id}": "²" for slot in task.slots.all()})
    assert response.status_code == 422
    assert b"give every response a place" in response.content
    assert api_client(carol).get(f"/api/v1/campaigns/{campaign.slug}/export/", {"round": "²"}).status_code == 400
    assert api_client(carol).get(f"/api/v1/campaigns/{campaign.slug}/export/", {"seed": "١٢"}).status_code == 400


# The probe: every bad value to every write endpoint of the API


BAD_VALUES = ["a\x00b", "\ud800", "²", 2**63, [[[["deep"]]]] * 3]
FIELDS = ["name", "slug", "instructions", "task_type", "responses_per_task", "overlap", "lease_seconds", "username", "role",
          "ranking", "rationale", "flags", "ratings", "time_spent_ms", "kind", "params", "prompt", "responses", "gold_ranking",
          "is_active", "is_paused", "paused", "shape", "format", "filters", "external_id", "text", "model"]


def api_routes(patterns, prefix=""):
    """Every URL route under the API, converters and regex groups still in (the router's format suffixes left out)."""
    for entry in patterns:
        route = prefix + str(entry.pattern).lstrip("^").rstrip("$")
        if isinstance(entry, URLResolver):
            yield from api_routes(entry.url_patterns, route)
        elif isinstance(entry, URLPattern) and route.startswith("api/v1/") and "format" not in route:
            yield route


def fill(route: str, campaign, task, run, version) -> str:
    values = {"<slug:slug>": campaign.slug, "<int:task_id>": str(task.pk), "<int:run_id>": str(run.pk),
              "<int:model_id>": str(version.pk), "<slug:name>": "snap", "<str:username>": "alice",
              "(?P<pk>[^/.]+)": "1", "/?": "/"}
    for placeholder, value in values.items():
        route = route.replace(placeholder, value)
    return "/" + route


@pytest.fixture
def probe_targets(alice, carol, campaign):
    task = Task.objects.filter(campaign=campaign).first()
    run = Run.objects.create(kind="generate", campaign=campaign, created_by=carol)
    version = ModelVersion.objects.first()
    routes = sorted({fill(route, campaign, task, run, version) for route in api_routes(get_resolver().url_patterns)})
    assert len(routes) > 20
    return routes


def test_no_bad_value_gives_a_500_on_any_api_endpoint(carol, alice, probe_targets):
    """carol administers the campaign (every admin endpoint), alice holds a lease (the labeling endpoints)."""
    alice_client = api_client(alice)
    lease(alice_client)
    failures = []
    for path in probe_targets:
        client = alice_client if path.startswith("/api/v1/tasks/") and "gold" not in path else api_client(carol)
        bodies = ["[" * 50_000 + "]" * 50_000]
        for value in BAD_VALUES:
            bodies += [json.dumps(dict.fromkeys(FIELDS, value)), json.dumps([dict.fromkeys(FIELDS, value)])]
            if isinstance(value, str):
                raw = quote(value.encode("utf-8", "surrogatepass"))
                query = "&".join(f"{name}={raw}" for name in ("page", "q", "cursor", "round", "seed", "kind", "prompt", "since"))
                if client.get(f"{path}?{query}").status_code >= 500:
                    failures.append(("get", path, value))
        for body in bodies:
            for method in ("post", "put", "patch"):
                response = getattr(client, method)(path, body.encode("utf-8", "surrogatepass"), content_type="application/json")
                if response.status_code >= 500:
                    failures.append((method, path, body[:60], response.status_code))
    assert failures == []


# The same for the HTML pages: every POST route with bad form values


FORM_FIELDS = ["name", "slug", "instructions", "task_type", "responses_per_task", "overlap", "lease_seconds", "criteria",
               "gold_rate", "gold_threshold", "username", "role", "action", "page", "ranking", "rationale", "flags",
               "time_spent_ms", "key", "text", "models", "kind", "q", "status", "reason", "methods"]


def web_routes(patterns, prefix=""):
    for entry in patterns:
        route = prefix + str(entry.pattern).lstrip("^").rstrip("$")
        if isinstance(entry, URLResolver):
            yield from web_routes(entry.url_patterns, route)
        elif isinstance(entry, URLPattern) and not route.startswith(("api/", "admin/")):
            yield route


def test_no_bad_form_value_gives_a_500_on_any_page(carol, alice, campaign):
    from django.test import Client

    task = Task.objects.filter(campaign=campaign).first()
    run = Run.objects.create(kind="generate", campaign=campaign, created_by=carol)
    values = {"<slug:slug>": campaign.slug, "<int:task_id>": str(task.pk), "<int:run_id>": str(run.pk), "<str:kind>": "reward",
              "<int:user_id>": str(alice.pk)}
    paths = set()
    for route in web_routes(get_resolver().url_patterns):
        for placeholder, value in values.items():
            route = route.replace(placeholder, value)
        paths.add("/" + route)
    browser = Client()
    browser.force_login(carol)
    lease(api_client(alice))
    labeler = Client()
    labeler.force_login(alice)
    failures = []
    for path in sorted(paths - {"/logout/"}):
        client = labeler if path.startswith("/tasks/") else browser
        for value in ("a\x00b", "²", "9" * 5000, "-²"):
            data = dict.fromkeys(FORM_FIELDS, value)
            data.update({f"place-{slot.response_id}": value for slot in task.slots.all()})
            data.update({f"rating-{slot.response_id}-helpful": value for slot in task.slots.all()})
            response = client.post(path, data)
            if response.status_code >= 500:
                failures.append((path, value[:10], response.status_code))
            if client.get(path, {"q": value, "page": value, "gold": value}).status_code >= 500:
                failures.append(("get", path, value[:10]))
    assert failures == []
