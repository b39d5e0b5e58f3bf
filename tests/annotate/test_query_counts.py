"""Query counts of the labeling page and of next/submit are pinned and do not grow with the campaign."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.conftest import api_client, join, make_campaign, make_user

# Pinned (savepoints included): a change that adds a query per request shows up here first.
# (next, submit, labeling page) per database: PostgreSQL leases in one statement (annotate.core.sql.lease_free_task).
PINNED = {"postgresql": (5, 10, 7), "sqlite": (9, 10, 11)}


def count(fn) -> int:
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return len(ctx.captured_queries)


def measure(prompts: int, labelers_before: int) -> tuple[int, int, int]:
    campaign = make_campaign(f"c{prompts}", prompts=prompts, overlap=3)
    for i in range(labelers_before):  # history in the campaign: other labelers' judgements
        other = api_client(join(make_user(f"o{prompts}-{i}"), campaign, "labeler"))
        for _ in range(min(prompts, 20)):
            body = other.get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").json()
            ids = [r["id"] for r in body["responses"]]
            other.post(f"/api/v1/tasks/{body['task_id']}/judgements/", {"ranking": [[ids[0]], [ids[1]]]}, format="json")
    user = join(make_user(f"alice{prompts}"), campaign, "labeler")
    client = api_client(user)
    bodies = []
    next_queries = count(lambda: bodies.append(client.get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").json()))
    ids = [r["id"] for r in bodies[0]["responses"]]
    submit_queries = count(
        lambda: client.post(f"/api/v1/tasks/{bodies[0]['task_id']}/judgements/", {"ranking": [[ids[0]], [ids[1]]]}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    )
    browser = Client()
    browser.force_login(user)
    page_queries = count(lambda: browser.get(f"/c/{campaign.slug}/label/"))
    return next_queries, submit_queries, page_queries


@pytest.mark.django_db
def test_labeling_query_counts_are_pinned_and_flat():
    small = measure(prompts=3, labelers_before=0)
    large = measure(prompts=60, labelers_before=3)
    assert small == large == PINNED[connection.vendor]
