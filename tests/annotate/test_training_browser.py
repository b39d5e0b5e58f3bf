"""From the browser: a researcher starts a reward run, an admin starts a generation with the defaults; each lands on its run's page."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotate.models import Run
from tests.annotate.browser import daphne_url, log_in, page  # noqa: F401  (fixtures)
from tests.annotate.test_exports import judge_all
from tests.conftest import join, make_campaign, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def judged(db):
    """5 prompts judged by alice and bob (10 judgements): enough to train on; rita researches, carol administers."""
    campaign = make_campaign("helpful", prompts=5, overlap=2)
    judge_all(join(make_user("alice"), campaign, "labeler"), campaign, "m1")
    judge_all(join(make_user("bob"), campaign, "labeler"), campaign, "m1")
    join(make_user("rita"), campaign, "researcher")
    join(make_user("carol", is_staff=True), campaign, "admin")
    return campaign


def test_a_researcher_starts_a_reward_run_and_lands_on_its_page(judged, daphne_url, page):  # noqa: F811
    log_in(page, daphne_url, "rita")
    page.goto(f"{daphne_url}/c/helpful/")
    expect(page.get_by_role("heading", name="Generate responses")).to_have_count(0)  # generation stays with admins
    train = page.get_by_role("button", name="Train reward model")
    expect(train).to_be_enabled()
    train.click()
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    expect(page.get_by_test_id("run-status")).to_have_text("queued")
    run = Run.objects.get()
    assert (run.kind, run.created_by.username) == ("reward", "rita")


def test_start_generation_with_the_defaults_starts_a_run(judged, daphne_url, page):  # noqa: F811
    log_in(page, daphne_url, "carol")
    page.goto(f"{daphne_url}/c/helpful/")
    page.get_by_role("button", name="Start generation").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    run = Run.objects.get()
    assert run.kind == "generate" and len(run.params["models"]) == 1
