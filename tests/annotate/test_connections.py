"""Lost connections: websockets through Redis stay open, a dropped database connection costs a retry
(a 503), never a 500 or a stuck run, and nothing keeps a connection past the end of its work."""
from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from channels_redis.utils import decode_hosts
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from redis.asyncio.connection import AbstractConnection

from annotate.jobs import engine
from annotate.models import Judgement, Run
from annotate.realtime.consumers import campaign_group
from config.asgi import application
from tests.conftest import api_key, join, make_campaign, make_user

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/3"
PG_ONLY = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="kills server-side connections with pg_terminate_backend: PostgreSQL only"
)


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# -- websockets through Redis ----------------------------------------------------------------------

HOUR = 3600
SPEEDUP = 100  # every timing of the layer and of the client a hundred times shorter


@pytest.mark.django_db(transaction=True)
def test_a_quiet_websocket_through_redis_stays_open_for_an_hour(settings, monkeypatch, campaign, rita):
    """The failure: each websocket waits for events in 5 s blocking reads (BZPOPMIN); a client that
    times reads out at 5 s (redis 8's default) fails the first wait that ends empty, and daphne
    closes the socket with 1011. Here every wait and the client's read timeout are a hundred times
    shorter, in the configured ratio, and the socket lives through an hour's worth of waits."""
    layer_config = django_settings.CHANNEL_LAYERS["default"]
    if layer_config["BACKEND"] == "channels.layers.InMemoryChannelLayer":  # REDIS_URL unset: build the Redis one as settings would
        layer_config = {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": django_settings.REDIS_READ_TIMEOUT}]}}
    host = decode_hosts(layer_config["CONFIG"]["hosts"])[0].copy()
    # the read timeout the pinned client really uses: the configured one, or the client's default
    read_timeout = host.get("socket_timeout", inspect.signature(AbstractConnection.__init__).parameters["socket_timeout"].default)
    host["socket_timeout"] = None if read_timeout is None else read_timeout / SPEEDUP
    prefix = f"arbiter-test-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = {"default": {**layer_config, "CONFIG": {"hosts": [host], "prefix": prefix}}}
    monkeypatch.setattr(RedisChannelLayer, "brpop_timeout", RedisChannelLayer.brpop_timeout / SPEEDUP)
    waits = []
    original = RedisChannelLayer._brpop_with_clean

    async def counted(self, *args, **kwargs):
        waits.append(1)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(RedisChannelLayer, "_brpop_with_clean", counted)
    cookie = session_cookie(rita)
    hour_of_waits = HOUR // 5

    async def scenario():
        ws = WebsocketCommunicator(
            application, f"/ws/campaigns/{campaign.slug}/", headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())]
        )
        connected, _ = await ws.connect()
        assert connected
        while len(waits) < hour_of_waits:
            assert await ws.receive_nothing(timeout=0.5, interval=0.05), "the socket got output while nothing was sent"
        await get_channel_layer().group_send(campaign_group(campaign.pk), {"type": "campaign.event", "payload": {"event": "still-here"}})
        event = await ws.receive_json_from(timeout=5)  # raises the consumer's error had it died
        await ws.disconnect()
        return event

    assert async_to_sync(scenario)() == {"event": "still-here"}
    assert len(waits) >= hour_of_waits


# -- a database that drops connections under load --------------------------------------------------

LABELERS = 8
LOAD_SECONDS = 15
KILL_EVERY = 0.5


def test_database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False  # a helper, not a test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=django_settings.BASE_DIR, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_port(port: int, server: subprocess.Popen, log_path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)


def call(base: str, method: str, path: str, token: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict | None]:
    """One API call; a 503 (lost connection: the request did not complete) is sent again, as a client should."""
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    data = json.dumps(body).encode() if body is not None else None
    for _ in range(50):
        request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return exc.code, None
            time.sleep(float(exc.headers.get("Retry-After", "1")) / 10)  # a tenth: the test is short
    return 503, None


def label(base: str, slug: str, token: str, until: float, acknowledged: list, failures: list) -> None:
    while time.monotonic() < until:
        status, task = call(base, "GET", f"/api/v1/campaigns/{slug}/tasks/next/", token)
        if status == 204:
            return
        if status != 200:
            failures.append(("next", status))
            continue
        ids = [r["id"] for r in task["responses"]]
        status, stored = call(base, "POST", f"/api/v1/tasks/{task['task_id']}/judgements/", token,
                              {"ranking": [[ids[0]], [ids[1]]], "time_spent_ms": 900}, key=uuid.uuid4().hex)
        if status in (200, 201):
            acknowledged.append(stored["id"])
        else:
            failures.append(("submit", status))


def kill_connections(dbname: str, spare: set[int], until: float, killed: list) -> None:
    """Every KILL_EVERY seconds, terminate every backend on the test database but the test's own."""
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        while time.monotonic() < until:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND NOT pid = ANY(%s)", [dbname, list(spare)]
            ).fetchall()
            killed.append(len(rows))
            time.sleep(KILL_EVERY)


@PG_ONLY
@pytest.mark.django_db(transaction=True)
def test_killing_every_connection_under_load_costs_retries_not_500s_or_stuck_runs(tmp_path, carol):
    """daphne, db_worker and housekeeping (as `make demo` runs them) under labelers and runs while
    every one of their connections is killed twice a second: no 500, no process dies, nothing
    acknowledged is lost, no task over-served, and every run ends."""
    campaign = make_campaign("kills", prompts=60, overlap=2)
    join(carol, campaign, "admin")
    tokens = [api_key(join(make_user(f"kl{i}"), campaign, "labeler")) for i in range(LABELERS)]
    env = {**os.environ, "DATABASE_URL": test_database_url(), "ARTIFACTS_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    env.pop("CONN_MAX_AGE", None)  # the defaults, as a new user runs them
    env.pop("REDIS_URL", None)
    port = free_port()
    manage = [sys.executable, "manage.py"]
    processes = {
        "daphne": start([str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
                        env, tmp_path / "daphne.log"),
        "db_worker": start([*manage, "db_worker", "--queue-name", "*", "--no-startup-delay", "--interval", "0.2"], env, tmp_path / "worker.log"),
        "housekeeping": start([*manage, "housekeeping", "--every", "0.5"], env, tmp_path / "housekeeping.log"),
    }
    base = f"http://127.0.0.1:{port}"
    acknowledged: list[int] = []
    failures: list = []
    killed: list[int] = []
    runs: list[int] = []
    try:
        wait_for_port(port, processes["daphne"], tmp_path / "daphne.log")
        until = time.monotonic() + LOAD_SECONDS
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            spare = {cursor.fetchone()[0]}
        threads = [threading.Thread(target=label, args=(base, campaign.slug, t, until, acknowledged, failures)) for t in tokens]
        threads.append(threading.Thread(target=kill_connections, args=(connection.settings_dict["NAME"], spare, until, killed)))
        for t in threads:
            t.start()
        while time.monotonic() < until - 3:  # runs started under fire: the worker is killed mid-run too
            runs.append(engine.start_run("snapshot", campaign=campaign, params={"name": f"under-fire-{len(runs)}"}, user=carol).pk)
            time.sleep(1)
        for t in threads:
            t.join(timeout=LOAD_SECONDS + 120)
        deadline = time.monotonic() + 60
        while Run.objects.filter(pk__in=runs, status__in=["queued", "running"]).exists():
            assert time.monotonic() < deadline, list(Run.objects.filter(pk__in=runs).values_list("pk", "status"))
            time.sleep(0.5)
        alive = {name: p.poll() is None for name, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in processes.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        # this process's idle pooled connections were killed with the rest: later tests start on a fresh pool
        connection.close()
        connection.close_pool()
    assert sum(killed) > LABELERS, "the killer found too few connections to kill: the test proved nothing"
    assert alive == {"daphne": True, "db_worker": True, "housekeeping": True}, (tmp_path / "worker.log").read_text()[-3000:]
    assert not failures, failures[:10]  # no 500: every lost connection was a 503 and the retry went through
    assert acknowledged and Judgement.objects.filter(pk__in=acknowledged).count() == len(set(acknowledged))
    assert Run.objects.filter(pk__in=runs, status="succeeded").exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM annotate_task WHERE campaign_id = %s AND (remaining < 0 OR judgements_received > judgements_needed)", [campaign.pk]
        )
        assert cursor.fetchone()[0] == 0  # no task over-served


# -- what a dead worker leaves behind --------------------------------------------------------------


def work_off_queue() -> None:
    call_command("db_worker", "--batch", "--queue-name", "*", "--no-startup-delay", stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db(transaction=True)
def test_a_dead_workers_run_task_row_and_partial_files_are_cleaned_up(artifacts, campaign, carol):
    run = engine.start_run("snapshot", campaign=campaign, params={"name": "dead-worker"}, user=carol)
    long_ago = timezone.now() - timedelta(minutes=5)
    # what a SIGKILLed worker leaves: the run and its task row RUNNING, files half written
    DBTaskResult.objects.filter(pk=Run.objects.get(pk=run.pk).task_result_id).update(status="RUNNING", started_at=long_ago)
    Run.objects.filter(pk=run.pk).update(status="running", heartbeat_at=long_ago, started_at=long_ago)
    partial = artifacts / "runs" / str(run.pk)
    partial.mkdir(parents=True)
    (partial / "half-written.bin").write_bytes(b"\0" * 10)
    resumable = engine.start_run("snapshot", campaign=campaign, params={"name": "ppo-like"}, user=carol)
    Run.objects.filter(pk=resumable.pk).update(kind="ppo", status="running", heartbeat_at=long_ago)
    (artifacts / "runs" / str(resumable.pk) / "ppo").mkdir(parents=True)

    assert engine.fail_stale_runs() == 2
    run.refresh_from_db()
    assert run.status == "failed"
    assert DBTaskResult.objects.get(pk=run.task_result_id).status == "FAILED"
    assert not partial.exists()
    assert (artifacts / "runs" / str(resumable.pk) / "ppo").is_dir()  # PPO resumes from its checkpoint: kept


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_whose_task_was_lost_is_enqueued_again_and_runs(artifacts, campaign, carol):
    run = engine.start_run("snapshot", campaign=campaign, params={"name": "lost-task"}, user=carol)
    lost_task = Run.objects.get(pk=run.pk).task_result_id
    # the worker took the task and lost its connection before claiming the run: task failed, run queued
    DBTaskResult.objects.filter(pk=lost_task).update(status="FAILED", finished_at=timezone.now())
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    fresh = engine.start_run("snapshot", campaign=campaign, params={"name": "fresh"}, user=carol)

    assert engine.requeue_lost_runs() == 1
    run.refresh_from_db()
    assert run.task_result_id != lost_task
    work_off_queue()
    run.refresh_from_db()
    fresh.refresh_from_db()
    assert (run.status, fresh.status) == ("succeeded", "succeeded")
    assert engine.requeue_lost_runs(now=timezone.now() + timedelta(minutes=5)) == 0  # finished runs are left alone
