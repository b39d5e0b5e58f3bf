"""The live dashboard in headless Chromium: a judgement sent by another client shows up without a reload.

pytest-django's live_server speaks WSGI only (no websockets), so the ASGI app runs under daphne,
as in production, in a subprocess pointed at the test database.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection, connections
from playwright.sync_api import expect, sync_playwright

from annotate.api.tokens import issue_token
from tests.annotate.test_browser import CHROMIUM, FLAGS, log_in
from tests.conftest import join, make_campaign, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def database_url() -> str:
    """The test database as a DATABASE_URL, for a server process of our own."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "", safe="") + (":" + quote(db["PASSWORD"], safe="") if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daphne_url(transactional_db, tmp_path):
    """The ASGI app (HTTP and websockets) under daphne on a free port, against the test database."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url(), "CONN_MAX_AGE": "0", "DJANGO_SETTINGS_MODULE": "config.settings"}
    log = (tmp_path / "daphne.log").open("w+")
    daphne = Path(sys.executable).parent / "daphne"
    server = subprocess.Popen(
        [str(daphne), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"daphne did not start:\n{log.read()}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def page(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop lives in this thread; the ORM stays sync
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        connections.close_all()  # the test's connection, only reachable while Playwright's loop runs (see test_browser)
        browser.close()


def api(base_url: str, token: str, method: str, path: str, body=None) -> dict | None:
    """Another client: a labeler's script calling the REST API."""
    request = urllib.request.Request(
        base_url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def judge_over_the_api(base_url: str, token: str) -> None:
    task = api(base_url, token, "GET", "/api/v1/campaigns/live/tasks/next/")
    ids = [r["id"] for r in task["responses"]]
    api(base_url, token, "POST", f"/api/v1/tasks/{task['task_id']}/judgements/", {"ranking": [[ids[0]], [ids[1]]]})


@pytest.fixture
def tokens(transactional_db) -> tuple[str, str]:
    """Campaign "live" with rita (researcher) and two labelers' API tokens.

    Made before Playwright starts: ORM calls made while it runs went through a second connection
    that was never closed (on PostgreSQL it kept the test database from being dropped).
    """
    campaign = make_campaign("live", prompts=3, overlap=2)
    join(make_user("rita"), campaign, "researcher")
    labelers = [join(make_user(name), campaign, "labeler") for name in ("alice", "bob")]
    return tuple(issue_token(u) for u in labelers)


def test_the_dashboard_updates_live_when_another_client_submits(tokens, daphne_url, page):
    alice_token, bob_token = tokens
    log_in(page, daphne_url, "rita")
    page.goto(f"{daphne_url}/c/live/")
    expect(page.get_by_test_id("no-judgements")).to_be_visible()
    expect(page.locator("#dashboard-live")).to_have_attribute("data-connected", "true", timeout=10_000)
    page.evaluate("window.notReloaded = true")

    judge_over_the_api(daphne_url, alice_token)
    expect(page.get_by_test_id("judgements-stored")).to_have_text("1", timeout=10_000)
    expect(page.get_by_test_id("progress-done")).to_have_text("1")
    expect(page.get_by_test_id("models")).to_contain_text("m1")

    judge_over_the_api(daphne_url, bob_token)  # the same task: now agreement can be measured
    expect(page.get_by_test_id("judgements-stored")).to_have_text("2", timeout=10_000)
    expect(page.get_by_test_id("alpha")).to_have_text("1.000")  # both preferred the same response
    assert page.evaluate("window.notReloaded") is True  # swapped in place, no page load

    # a burst: refreshes at most once a second, and the last judgement of the burst is not lost
    page.evaluate("""() => {  // when each refresh starts, by the browser's clock
        window.refreshes = [];
        document.body.addEventListener("htmx:beforeRequest", () => window.refreshes.push(performance.now()));
    }""")
    for token in (alice_token, bob_token, alice_token, bob_token):
        judge_over_the_api(daphne_url, token)
    expect(page.get_by_test_id("judgements-stored")).to_have_text("6", timeout=10_000)
    refreshes = page.evaluate("window.refreshes")
    assert refreshes and all(later - earlier >= 990 for earlier, later in zip(refreshes, refreshes[1:]))
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # readable on a phone, no sideways scrolling
