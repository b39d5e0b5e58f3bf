"""End to end in real headless Chromium (Debian's package, driven by Playwright): log in, rank with the keyboard, submit, next."""
from __future__ import annotations

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from annotate.models import Judgement
from tests.conftest import join, make_campaign, make_user

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser_page(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the ORM calls of the test are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        # While Playwright's loop runs, Django keys this thread's connections by context: the test's
        # ORM calls opened one that only this context can close (left open, PostgreSQL could not
        # drop the test database at the end of the run).
        connections.close_all()
        browser.close()


def log_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', f"pw-{username}")
    page.click('button[type="submit"]')
    expect(page.get_by_role("heading", name="Your campaigns")).to_be_visible()


def test_a_labeler_ranks_with_the_keyboard_and_gets_the_next_task(live_server, browser_page):
    campaign = make_campaign("rank3", task_type="ranking", k=3, prompts=2, overlap=1, models=("a", "b", "c"))
    join(make_user("alice"), campaign, "labeler")
    page = browser_page
    log_in(page, live_server.url, "alice")
    page.click("text=Start labeling")
    form = page.locator("#task-form")
    expect(form).to_be_visible()
    first_task = form.get_attribute("data-task-id")
    ids = [int(x) for x in page.locator(".response").evaluate_all("els => els.map(e => e.dataset.responseId)")]
    submit = page.get_by_test_id("submit")
    expect(submit).to_be_disabled()
    page.keyboard.press("2")
    page.keyboard.press("=")
    page.keyboard.press("3")
    expect(page.get_by_test_id("rank-list").locator("li")).to_have_count(2)
    expect(submit).to_be_enabled()  # the last response is placed last for the labeler
    page.fill('textarea[name="rationale"]', "2 and 3 are equally good")
    page.locator("body").click(position={"x": 5, "y": 5})  # leave the textarea so shortcuts work again
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("done-count")).to_have_text("1")
    expect(page.locator("#task-form")).not_to_have_attribute("data-task-id", first_task)
    judgement = Judgement.objects.get()
    assert judgement.ranking == [[ids[1], ids[2]], [ids[0]]]
    assert judgement.rationale == "2 and 3 are equally good"
    assert judgement.time_spent_ms is not None and judgement.time_spent_ms > 0
    # the second and last task, then the empty state
    page.keyboard.press("1")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("empty")).to_be_visible()
    assert Judgement.objects.count() == 2


def test_pairwise_choice_by_click_on_a_phone(live_server, browser_page):
    campaign = make_campaign("ab", prompts=1, overlap=1)
    join(make_user("bob"), campaign, "labeler")
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, live_server.url, "bob")
    page.goto(f"{live_server.url}/c/ab/label/")
    ids = [int(x) for x in page.locator(".response").evaluate_all("els => els.map(e => e.dataset.responseId)")]
    page.get_by_role("button", name="Both bad").click()
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("empty")).to_be_visible()
    judgement = Judgement.objects.get()
    assert judgement.ranking == [ids] and judgement.flags == ["all_bad"]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling at phone width
