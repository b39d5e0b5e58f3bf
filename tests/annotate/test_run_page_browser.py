"""A run's page tells the truth without a reload: status, progress, message, log, error and results follow the run."""
from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotate.models import Run
from tests.annotate.browser import PHONE, log_in, no_sideways_scroll, page  # noqa: F401  (the page fixture)
from tests.conftest import join, make_campaign, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queued(db):
    campaign = make_campaign("runs", prompts=1)
    rita = join(make_user("rita"), campaign, "researcher")
    return Run.objects.create(kind="reward", campaign=campaign, created_by=rita, params={"epochs": 1.0, "base_model": "tiny", "extra": {"a": [1, 2]}})


def test_a_run_goes_queued_running_succeeded_on_its_page_without_a_reload(queued, live_server, page):  # noqa: F811
    log_in(page, live_server.url, "rita")
    page.goto(f"{live_server.url}/runs/{queued.pk}/")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    status, message = page.get_by_test_id("run-status"), page.get_by_test_id("run-message")
    expect(status).to_have_text("queued")
    expect(message).to_contain_text("waiting for a worker")  # something to read from the first second
    expect(page.get_by_test_id("run-params")).to_contain_text("base_model")

    Run.objects.filter(pk=queued.pk).update(status="running", started_at=timezone.now(), worker="w1")
    expect(status).to_have_text("running")
    expect(message).to_contain_text("Starting")
    Run.objects.filter(pk=queued.pk).update(progress=0.5, progress_message="epoch 1 of 2", log_tail="step 1 loss 0.69\n" + "x" * 3000)
    expect(message).to_have_text("epoch 1 of 2")
    expect(page.get_by_test_id("run-progress")).to_have_js_property("value", 0.5)
    expect(page.get_by_test_id("run-log")).to_contain_text("step 1 loss 0.69")
    assert no_sideways_scroll(page)  # a long log line wraps

    Run.objects.filter(pk=queued.pk).update(status="succeeded", progress=1.0, finished_at=timezone.now(), result={"eval/accuracy": 0.75})
    expect(status).to_have_text("succeeded")
    expect(page.get_by_test_id("run-result")).to_contain_text("eval/accuracy")
    assert page.evaluate("window.sameDocument") is True


def test_a_failed_run_shows_a_wrapped_error_and_what_to_do_on_a_phone(queued, live_server, page):  # noqa: F811
    Run.objects.filter(pk=queued.pk).update(status="failed", finished_at=timezone.now(), error="ValueError: " + "not-enough-held-out-pairs-" * 60)
    page.set_viewport_size(PHONE)
    log_in(page, live_server.url, "rita")
    page.goto(f"{live_server.url}/runs/{queued.pk}/")
    expect(page.get_by_test_id("run-status")).to_have_text("failed")
    expect(page.get_by_role("alert")).to_contain_text("not-enough-held-out-pairs")
    expect(page.get_by_test_id("run-error")).to_contain_text("What next")
    assert no_sideways_scroll(page)


def test_a_running_runs_plots_follow_its_new_metrics_without_a_reload(queued, live_server, page):  # noqa: F811
    from annotate.models import RunMetric

    Run.objects.filter(pk=queued.pk).update(status="running", started_at=timezone.now(), worker="w1")
    log_in(page, live_server.url, "rita")
    page.goto(f"{live_server.url}/runs/{queued.pk}/")
    page.evaluate("window.sameDocument = true")
    metrics = page.get_by_test_id("run-metrics")
    expect(metrics).to_contain_text("No metrics recorded")
    RunMetric.objects.bulk_create([RunMetric(run=queued, step=s, name="loss", value=1.0 / (s + 1)) for s in range(3)])
    expect(metrics.locator("svg")).to_have_count(1, timeout=30_000)  # re-fetched while running (polls every 2 s, plots at most every 10 s)
    expect(page.get_by_test_id("run-status")).to_have_text("running")
    assert page.evaluate("window.sameDocument") is True
