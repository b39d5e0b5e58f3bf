"""One access door: every URL of the pages and the API asks `annotate.access`, and a non-member gets 404 for
anything scoped to a campaign, a run, a task or a model; reads do not write (stale runs are failed by housekeeping)."""
from __future__ import annotations

import inspect
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from annotate import access
from annotate.models import ModelVersion, Run, Task
from tests.conftest import api_client

# Open to anyone (or with their own checks, like Django's admin): listed here so a new URL is a decision.
PUBLIC = {"login", "logout", "home", "schema", "api-docs"}
PUBLIC_NAMESPACES = {"admin"}
# Not scoped to a campaign: they still ask access (staff only, or the user's own campaigns and models).
UNSCOPED = {"campaign-create", "campaign-preview", "api-campaigns", "api-models", "models"}


def url_names(resolver=None, namespace: str = "", prefix_kwargs: tuple = ()):
    """(name, kwarg names) of every named URL pattern, walking includes."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        kwargs = prefix_kwargs + tuple(entry.pattern.regex.groupindex)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from url_names(entry, inner, kwargs)
        elif isinstance(entry, URLPattern) and entry.name:
            yield f"{namespace}{entry.name}", kwargs


@pytest.fixture
def targets(campaign, alice):
    """Objects of campaign `helpful`, which mallory is not a member of."""
    task = Task.objects.filter(campaign=campaign).first()
    run = Run.objects.create(kind="generate", campaign=campaign)
    model = ModelVersion.objects.create(name="helpful-rm", kind="reward", checkpoint_path="models/rm", metadata={"campaign": "helpful"})
    return {"slug": "helpful", "task_id": task.pk, "run_id": run.pk, "model_id": model.pk, "username": "alice",
            "user_id": alice.pk, "name": "snap", "kind": "reward", "pk": task.pk}


@pytest.fixture
def consulted(monkeypatch):
    """The names of the access functions called, in order (each still does its work)."""
    calls: list[str] = []
    for name, function in inspect.getmembers(access, inspect.isfunction):
        if function.__module__ != access.__name__:
            continue

        def recording(*args, _name=name, _function=function, **kwargs):
            calls.append(_name)
            return _function(*args, **kwargs)

        monkeypatch.setattr(access, name, recording)
    return calls


def request(user, url: str):
    """GET, else POST, else PATCH (the first the view takes); through the API with a token, the pages with a session."""
    client = api_client(user) if url.startswith("/api/") else Client()
    if not url.startswith("/api/"):
        client.force_login(user)
    for method in (client.get, client.post, client.patch):
        response = method(url)
        if response.status_code != 405:
            break
    return response


def test_every_url_is_listed_or_goes_through_access(db):
    names = {name for name, _ in url_names() if name.split(":")[0] not in PUBLIC_NAMESPACES}
    assert PUBLIC | UNSCOPED <= names  # the lists name real URLs
    assert len(names - PUBLIC - UNSCOPED) >= 30


def test_a_non_member_gets_404_on_every_scoped_url_and_access_decided_it(targets, mallory, consulted):
    checked = []
    for name, kwargs in url_names():
        if name in PUBLIC or name in UNSCOPED or name.split(":")[0] in PUBLIC_NAMESPACES:
            continue
        url = reverse(name, kwargs={k: targets[k] for k in kwargs})
        consulted.clear()
        response = request(mallory, url)
        assert response.status_code == 404, (name, url, response.status_code)
        assert consulted, f"{name} ({url}) answered without asking annotate.access"
        checked.append(name)
    assert {"api-run", "run", "api-model-score", "api-model-comparison", "submit", "api-gold", "data-judgements-list"} <= set(checked)


@pytest.mark.parametrize("name", sorted(UNSCOPED))
def test_the_unscoped_urls_ask_access_too_and_show_nothing_of_other_campaigns(targets, mallory, consulted, name):
    response = request(mallory, reverse(name))
    assert consulted, name
    assert response.status_code in (200, 403)
    assert b"helpful" not in response.content


# Reads do not write


@pytest.fixture
def stale_run(campaign):
    long_ago = timezone.now() - timedelta(minutes=10)
    return Run.objects.create(kind="generate", campaign=campaign, status="running", started_at=long_ago, heartbeat_at=long_ago)


def test_reading_a_stale_run_does_not_change_it_housekeeping_does(stale_run, carol, rita):
    client = Client()
    client.force_login(rita)
    for url in (f"/runs/{stale_run.pk}/", "/c/helpful/", "/c/helpful/runs/"):
        assert client.get(url).status_code == 200, url
    for url in (f"/api/v1/runs/{stale_run.pk}/", "/api/v1/campaigns/helpful/runs/"):
        assert api_client(rita).get(url).status_code == 200, url
    stale_run.refresh_from_db()
    assert stale_run.status == "running" and stale_run.finished_at is None
    call_command("housekeeping")
    stale_run.refresh_from_db()
    assert stale_run.status == "failed" and "heartbeat" in stale_run.error

