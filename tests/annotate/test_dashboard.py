"""The campaign dashboard: its figures, its page and API, and the websocket events that keep it live."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from annotate.labeling import assignment, judgements, validation
from annotate.models import Campaign
from annotate.realtime.events import campaign_group
from annotate.stats import dashboard
from annotate.stats.dashboard import dashboard_figures
from config.asgi import application
from tests.conftest import api_client, join, make_campaign, make_user

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def judge(user, campaign, *, first_wins: bool = True, ratings=None, limit: int | None = None) -> int:
    """Judge the labeler's next tasks (all of them, or `limit`), the first response in display order better."""
    done = 0
    while (limit is None or done < limit) and (lease := assignment.next_task_for(user, campaign)):
        ids = validation.task_response_ids(lease.task)
        ranking = [[ids[0]], [ids[1]]] if first_wins else [[ids[1]], [ids[0]]]
        judgements.submit(user, lease.task, ranking, ratings=ratings(ids) if ratings else None)
        done += 1
    return done


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# -- figures ---------------------------------------------------------------------------------------


def test_progress_counts_done_in_flight_and_remaining(campaign, alice, bob):
    judge(alice, campaign, limit=2)
    assignment.next_task_for(bob, campaign)  # an open lease: in flight
    progress = dashboard_figures(campaign)["progress"]
    assert (progress["needed"], progress["done"], progress["in_flight"], progress["remaining"]) == (10, 2, 1, 7)
    assert (progress["tasks"], progress["complete_tasks"]) == (5, 0)


def test_figures_cover_activity_agreement_models_and_labelers(campaign, alice, bob):
    judge(alice, campaign)
    judge(bob, campaign, first_wins=False)  # the opposite of alice on every task
    figures = dashboard_figures(campaign)
    assert figures["activity"]["judgements"] == 10
    assert figures["activity"]["last_hour"] == 10
    assert sum(point["n"] for point in figures["activity"]["series"]) == 10
    assert figures["agreement"]["shared_tasks"] == 5
    assert figures["agreement"]["raw_agreement"] == 0.0
    assert figures["agreement"]["alpha"] < 0
    assert {row["username"]: row["agreement"] for row in figures["labelers"]} == {"alice": 0.0, "bob": 0.0}
    models = {row["name"]: row for row in figures["models"]}
    assert set(models) == {"m1", "m2"}
    assert models["m1"]["win_rate"] == pytest.approx(0.5)  # alice and bob cancel out
    assert models["m1"]["ci_low"] <= models["m1"]["strength"] <= models["m1"]["ci_high"]


def test_criteria_ratings_are_summarised_per_model(campaign, alice):
    Campaign.objects.filter(pk=campaign.pk).update(criteria=[{"name": "helpful", "label": "Helpfulness", "min": 1, "max": 7}])
    campaign.refresh_from_db()
    m1_of = {}
    for rid, name in campaign.prompts.values_list("responses__id", "responses__model_version__name"):
        m1_of[rid] = name == "m1"
    judge(alice, campaign, ratings=lambda ids: {str(rid): {"helpful": 6 if m1_of[rid] else 2} for rid in ids})
    (criterion,) = dashboard_figures(campaign)["criteria"]
    assert criterion["label"] == "Helpfulness"
    assert [(m["name"], m["mean"], m["n"]) for m in criterion["models"]] == [("m1", 6.0, 5), ("m2", 2.0, 5)]


def test_statistics_follow_each_judgement_unless_they_are_slow_to_compute(campaign, alice, monkeypatch):
    monkeypatch.setattr(dashboard, "SLOW_STATS_SECONDS", float("inf"))  # as if every computation were quick, however loaded the machine
    judge(alice, campaign, limit=1)
    assert dashboard_figures(campaign)["agreement"]["judgements"] == 1
    judge(alice, campaign, limit=1)
    figures = dashboard_figures(campaign)
    assert (figures["agreement"]["judgements"], figures["stats_current"]) == (2, True)  # fast: always fresh
    monkeypatch.setattr(dashboard, "SLOW_STATS_SECONDS", 0.0)  # as if that computation had taken long
    judge(alice, campaign, limit=1)
    figures = dashboard_figures(campaign)
    assert figures["progress"]["done"] == 3  # counts stay live
    assert (figures["agreement"]["judgements"], figures["stats_current"]) == (2, False)  # refits wait a little
    monkeypatch.setattr(dashboard, "MAX_STATS_AGE_SECONDS", 0)
    assert dashboard_figures(campaign)["agreement"]["judgements"] == 3


def count_queries(fn) -> int:
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return len(ctx.captured_queries)


def test_query_counts_do_not_grow_with_the_campaign(db):
    def measure(prompts: int, labelers: int) -> tuple[int, int]:
        campaign = make_campaign(f"size{prompts}", prompts=prompts, overlap=labelers)
        rita = join(make_user(f"rita{prompts}"), campaign, "researcher")
        for i in range(labelers):
            judge(join(make_user(f"l{prompts}-{i}"), campaign, "labeler"), campaign, first_wins=i % 2 == 0)
        page = count_queries(lambda: browser(rita).get(f"/c/{campaign.slug}/"))
        api = count_queries(lambda: api_client(rita).get(f"/api/v1/campaigns/{campaign.slug}/dashboard/"))
        return page, api

    assert measure(prompts=2, labelers=2) == measure(prompts=12, labelers=3)


# -- page and API ----------------------------------------------------------------------------------


def test_an_empty_campaign_shows_clear_empty_states(campaign, rita):
    html = browser(rita).get(f"/c/{campaign.slug}/").content.decode()
    assert 'ws-connect="/ws/campaigns/helpful/"' in html
    assert "hx-ws-2" in html  # htmx's websocket extension, served locally
    assert "No judgements yet" in html
    assert "Agreement needs tasks judged by at least two labelers" in html
    assert "No model comparisons yet" in html


def test_the_page_shows_agreement_models_and_plots(campaign, rita, alice, bob):
    judge(alice, campaign)
    judge(bob, campaign)
    html = browser(rita).get(f"/c/{campaign.slug}/").content.decode()
    assert "Krippendorff" in html and "Fleiss" in html
    assert "m1" in html and "m2" in html
    assert html.count("<svg") >= 2  # activity and strengths, drawn server-side
    assert 'data-testid="judgements-stored">10<' in html


def test_the_api_serves_the_figures_to_admins_and_researchers(campaign, carol, rita, alice, mallory):
    judge(alice, campaign)
    body = api_client(rita).get("/api/v1/campaigns/helpful/dashboard/").json()
    assert body["progress"]["done"] == 5
    assert {m["name"] for m in body["models"]} == {"m1", "m2"}
    assert set(body["agreement"]) >= {"alpha", "raw_agreement", "kappa", "shared_tasks"}
    assert api_client(carol).get("/api/v1/campaigns/helpful/dashboard/").status_code == 200
    assert api_client(alice).get("/api/v1/campaigns/helpful/dashboard/").status_code == 403  # labelers don't see others' agreement
    assert api_client(mallory).get("/api/v1/campaigns/helpful/dashboard/").status_code == 404


def test_the_html_format_is_the_partial_the_live_page_swaps_in(campaign, rita, alice):
    judge(alice, campaign, limit=1)
    response = browser(rita).get("/api/v1/campaigns/helpful/dashboard/?format=html", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert '<div id="dashboard"' in html
    assert "<html" not in html and 'data-testid="judgements-stored">1<' in html


# -- live events -----------------------------------------------------------------------------------


def session_cookie(user) -> str:
    return browser(user).cookies["sessionid"].value


def socket(cookie: str | None, slug: str = "helpful") -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, f"/ws/campaigns/{slug}/", headers=headers)


@pytest.mark.django_db(transaction=True)
def test_a_member_hears_of_each_judgement_once_it_is_committed(campaign, rita, alice):
    cookie = session_cookie(rita)
    lease = assignment.next_task_for(alice, campaign)
    ids = validation.task_response_ids(lease.task)

    def submit_then_roll_back():
        with transaction.atomic():
            judgements.submit(alice, lease.task, [[ids[1]], [ids[0]]])
            transaction.set_rollback(True)

    async def scenario():
        ws = socket(cookie)
        connected, _ = await ws.connect()
        assert connected
        await database_sync_to_async(submit_then_roll_back)()
        assert await ws.receive_nothing(timeout=0.3)  # rolled back: nothing to tell
        await database_sync_to_async(judgements.submit)(alice, lease.task, [[ids[0]], [ids[1]]])
        event = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return event

    assert async_to_sync(scenario)() == {"event": "judgement", "task": lease.task.pk, "count": 1}


@pytest.mark.django_db(transaction=True)
def test_non_members_and_anonymous_visitors_are_refused(campaign, mallory):
    cookie = session_cookie(mallory)

    async def scenario():
        results = []
        for ws in (socket(cookie), socket(None)):
            results.append(await ws.connect())
            await ws.disconnect()
        return results

    assert async_to_sync(scenario)() == [(False, 4404), (False, 4404)]


@pytest.mark.django_db(transaction=True)
def test_events_reach_browsers_through_redis_from_another_process(settings, campaign, rita, alice):
    prefix = f"arbiter-test-{uuid.uuid4().hex[:8]}"  # other test runs may share this Redis
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL], "prefix": prefix}}
    }
    cookie = session_cookie(rita)
    lease = assignment.next_task_for(alice, campaign)
    ids = validation.task_response_ids(lease.task)
    # what a worker process does: a group_send through channels_redis, no daphne in sight
    worker = (
        "import asyncio, sys; from channels_redis.core import RedisChannelLayer\n"
        "layer = RedisChannelLayer(hosts=[sys.argv[1]], prefix=sys.argv[2])\n"
        "asyncio.run(layer.group_send(sys.argv[3], {'type': 'campaign.event', 'payload': {'event': 'from-worker'}}))\n"
    )

    async def scenario():
        ws = socket(cookie)
        connected, _ = await ws.connect()
        assert connected
        await database_sync_to_async(judgements.submit)(alice, lease.task, [[ids[0]], [ids[1]]])
        first = await ws.receive_json_from(timeout=5)
        await database_sync_to_async(subprocess.run)(
            [sys.executable, "-c", worker, REDIS_URL, prefix, campaign_group(campaign.pk)], check=True, timeout=30
        )
        second = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return first, second

    assert async_to_sync(scenario)() == ({"event": "judgement", "task": lease.task.pk, "count": 1}, {"event": "from-worker"})


@pytest.mark.django_db(transaction=True)
def test_through_redis_a_burst_of_judgements_is_one_event_with_its_count(settings, campaign, rita, alice, bob):
    prefix = f"arbiter-test-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL], "prefix": prefix}}
    }
    cookie = session_cookie(rita)
    leases = [assignment.next_task_for(labeler, campaign) for labeler in (alice, bob)]

    async def scenario():
        ws = socket(cookie)
        connected, _ = await ws.connect()
        assert connected
        for labeler, lease in zip((alice, bob), leases):
            ids = await database_sync_to_async(validation.task_response_ids)(lease.task)
            await database_sync_to_async(judgements.submit)(labeler, lease.task, [[ids[0]], [ids[1]]])
        event = await ws.receive_json_from(timeout=5)
        quiet = await ws.receive_nothing(timeout=1)
        await ws.disconnect()
        return event, quiet

    event, quiet = async_to_sync(scenario)()
    assert event == {"event": "judgement", "task": leases[1].task.pk, "count": 2} and quiet
