"""Shared by the browser tests: headless Chromium (Debian's) with a page that fails the test on any console error."""
from __future__ import annotations

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from tests.annotate.test_dashboard_browser import daphne_url  # noqa: F401  (re-exported: the ASGI server, websockets included)

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def page(monkeypatch):
    """A desktop-sized page; every console error and uncaught exception is collected and fails the test at the end."""
    # Playwright's sync API keeps an event loop in this thread; the ORM calls of the test are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(f"{msg.type}: {msg.text} ({page.url})") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc} ({page.url})"))
        page.console_errors = errors
        yield page
        # While Playwright's loop runs, Django keys this thread's connections by context: the ORM calls
        # the test made meanwhile opened a connection only this context can close (see test_browser).
        connections.close_all()
        browser.close()
    assert not errors, errors


def log_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', f"pw-{username}")
    page.click('button[type="submit"]')
    expect(page.get_by_role("heading", name="Your campaigns")).to_be_visible()


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def uncovered(page, selector: str) -> bool:
    """The element's centre is inside the viewport and the topmost element there is it (or inside it): not under a sticky bar."""
    return page.evaluate(
        """(sel) => { const el = document.querySelector(sel); if (!el) return false;
        const r = el.getBoundingClientRect(); const x = r.left + r.width / 2, y = r.top + r.height / 2;
        if (x < 0 || y < 0 || x > innerWidth || y > innerHeight) return false;
        const top = document.elementFromPoint(x, y); return top === el || el.contains(top); }""",
        selector,
    )


def overflowing(page) -> list[str]:
    """The deepest elements that stick out past the right edge (for failure messages)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > innerWidth + 0.5
        && !Array.from(e.children).some(c => c.getBoundingClientRect().right > innerWidth + 0.5))
        .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : '')
        + ' ' + Math.round(e.getBoundingClientRect().right))"""
    )
