"""Shared people and campaigns: alice and bob label, carol administers, rita researches, mallory is in another campaign."""
from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import override_settings
from rest_framework.test import APIClient

from annotate.api.tokens import issue_token
from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.models import Campaign, Membership


def make_user(username: str, **extra):
    return get_user_model().objects.create_user(username=username, password="pw-" + username, **extra)


@pytest.fixture(scope="session", autouse=True)
def close_connection_pools_at_the_end(django_db_setup, django_db_blocker):
    """Close each alias's connection pool before pytest-django drops the test database: a pool keeps
    idle connections open, and PostgreSQL refuses to drop a database that has sessions. Then fail
    the run if a session is still open: a test left a connection behind (a thread's, or one opened
    while Playwright's loop ran), which would keep the test database from being dropped."""
    yield
    with django_db_blocker.unblock():
        for conn in connections.all(initialized_only=True):
            conn.close()
            if hasattr(conn, "close_pool"):
                conn.close_pool()
        if connections["default"].vendor == "postgresql":
            left = sessions_left_on_the_test_database()
            assert not left, f"sessions left open on the test database (application, started, state, last query): {left}"


def sessions_left_on_the_test_database(wait_seconds: float = 5) -> list[tuple]:
    """Other sessions on the test database, after waiting as long as DROP DATABASE does (5 s) for closed ones to end.
    Those still there are ended, so the database can be dropped all the same."""
    database = connections["default"].settings_dict["NAME"]
    sessions = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    with connections["default"]._nodb_cursor() as cursor:  # the 'postgres' database, as Django's DROP DATABASE uses
        deadline = time.monotonic() + wait_seconds
        while True:
            cursor.execute(f"SELECT application_name, backend_start, state, left(query, 200) {sessions}", [database])
            left = cursor.fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        cursor.execute(f"SELECT pg_terminate_backend(pid) {sessions}", [database])
    return left


@pytest.fixture(autouse=True)
def cache_of_its_own():
    """Each test sees an empty cache: a key prefix of its own (clearing a Redis cache would flush the
    channel layer's database too). Login failures and dashboard statistics never cross tests.
    (override_settings, not pytest-django's `settings`: some tests parametrize a `settings` of their own.)"""
    cache = {**django_settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}
    with override_settings(CACHES={"default": cache}):
        yield


def make_campaign(slug: str = "helpful", *, task_type="pairwise", k=2, overlap=2, prompts=5, lease_seconds=600, models=("m1", "m2")):
    """A campaign with `prompts` prompts, each with k responses from alternating models, so one task per prompt."""
    campaign = Campaign.objects.create(
        name=slug.title(), slug=slug, task_type=task_type, responses_per_task=k, overlap=overlap, lease_seconds=lease_seconds
    )
    import_prompts(campaign, [{"external_id": f"p{i}", "text": f"Question {i}?"} for i in range(prompts)])
    import_responses(
        campaign,
        [{"prompt": f"p{i}", "model": models[j % len(models)], "text": f"Answer {j} to {i}"} for i in range(prompts) for j in range(k)],
    )
    return campaign


def join(user, campaign, role):
    Membership.objects.create(user=user, campaign=campaign, role=role)
    return user


def api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key(user)}")
    return client


def api_key(user) -> str:
    """An API key of the user (keys are stored hashed, so one is issued per user object and kept on it)."""
    if not hasattr(user, "_test_api_key"):
        user._test_api_key = issue_token(user, replace=False)
    return user._test_api_key


@pytest.fixture
def campaign(db):
    return make_campaign()


@pytest.fixture
def alice(campaign):
    return join(make_user("alice"), campaign, "labeler")


@pytest.fixture
def bob(campaign):
    return join(make_user("bob"), campaign, "labeler")


@pytest.fixture
def carol(campaign):
    return join(make_user("carol", is_staff=True), campaign, "admin")


@pytest.fixture
def rita(campaign):
    return join(make_user("rita"), campaign, "researcher")


@pytest.fixture
def mallory(db):
    other = make_campaign("other", prompts=2)
    return join(make_user("mallory"), other, "labeler")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random SmolLM2-shaped policy with the real tokenizer (built once per session)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from training.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy") / "model", seed=0)


@pytest.fixture
def artifacts(db, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.ARTIFACTS_DIR.mkdir()
    return settings.ARTIFACTS_DIR
