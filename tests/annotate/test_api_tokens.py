"""API tokens are stored hashed, shown once, and still cost one query to check."""
from __future__ import annotations

import hashlib
import importlib
from io import StringIO

from django.apps import apps as global_apps
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.api.tokens import issue_token
from annotate.models import ApiToken

NEXT = "/api/v1/campaigns/helpful/tasks/next/"


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_the_database_holds_only_a_digest_of_the_key(alice):
    key = issue_token(alice)
    stored = ApiToken.objects.get(user=alice)
    assert stored.digest == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(list(ApiToken.objects.values_list()))
    assert not Token.objects.exists()
    assert client_with(key).get(NEXT).status_code == 200


def test_the_key_is_checked_in_one_query(alice):
    client = client_with(issue_token(alice))
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/models/").status_code == 200
    token_queries = [q["sql"] for q in queries if "annotate_apitoken" in q["sql"]]
    assert len(token_queries) == 1


def test_a_new_token_replaces_the_old_one(alice):
    old = issue_token(alice)
    new = issue_token(alice)
    assert client_with(old).get(NEXT).status_code == 401
    assert client_with(new).get(NEXT).status_code == 200


def test_adduser_shows_a_token_once(campaign):
    first, second, third = StringIO(), StringIO(), StringIO()
    call_command("adduser", "erin", "--role", "labeler", "--campaign", campaign.slug, stdout=first)
    key = next(line.split(": ")[1] for line in first.getvalue().splitlines() if line.startswith("token:"))
    call_command("adduser", "erin", "--role", "labeler", "--campaign", campaign.slug, stdout=second)
    assert key not in second.getvalue() and "issued earlier" in second.getvalue()
    assert client_with(key).get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").status_code == 200
    call_command("adduser", "erin", "--role", "labeler", "--new-token", stdout=third)
    new_key = next(line.split(": ")[1] for line in third.getvalue().splitlines() if line.startswith("token:"))
    assert client_with(new_key).get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").status_code == 200
    assert client_with(key).get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").status_code == 401


def test_the_migration_hashes_existing_clear_tokens_and_they_keep_working(alice):
    clear = Token.objects.create(user=alice).key
    migration = importlib.import_module("annotate.migrations.0008_api_tokens_hashed")
    migration.hash_existing_tokens(global_apps, None)
    assert not Token.objects.exists()
    assert client_with(clear).get(NEXT).status_code == 200


def test_the_admin_offers_no_clear_text_drf_tokens(db):
    staff = get_user_model().objects.create_superuser("root", password="pw-root")
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 404
    assert b"authtoken" not in client.get("/admin/").content
