"""The export page in Chromium: a researcher previews the row count, downloads pairs TRL reads, and freezes a snapshot."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from annotate.models import Snapshot
from tests.annotate.browser import daphne_url, log_in, page  # noqa: F401  (fixtures)
from tests.annotate.test_exports import judge_all
from tests.conftest import join, make_campaign, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def judged(db, monkeypatch, tmp_path):
    """A campaign of 4 prompts that alice and bob judged (8 pairs) and rita researches; artifacts under tmp_path (for the server too)."""
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    campaign = make_campaign("helpful", prompts=4, overlap=2)
    judge_all(join(make_user("alice"), campaign, "labeler"), campaign, "m1")
    judge_all(join(make_user("bob"), campaign, "labeler"), campaign, "m2")
    join(make_user("rita"), campaign, "researcher")
    return campaign


def test_a_researcher_downloads_pairs_that_trl_reads_from_the_export_page(judged, daphne_url, page, tmp_path):  # noqa: F811
    from datasets import load_dataset

    log_in(page, daphne_url, "rita")
    page.goto(f"{daphne_url}/c/helpful/")
    page.get_by_role("link", name="Export").click()
    expect(page.get_by_test_id("row-count")).to_have_text("8")
    page.select_option("#ex-models", "m1")  # every task has an m1 response: still 8
    expect(page.get_by_test_id("row-count")).to_have_text("8")
    page.fill("#ex-since", "2999-01-01")
    page.locator("#ex-since").dispatch_event("change")
    expect(page.get_by_test_id("export-preview")).to_contain_text("0 rows")
    page.fill("#ex-since", "")
    page.locator("#ex-since").dispatch_event("change")
    expect(page.get_by_test_id("row-count")).to_have_text("8")
    with page.expect_download() as download:
        page.get_by_test_id("download").click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == "helpful-pairs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and {"prompt", "chosen", "rejected"} <= set(rows[0])
    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.num_rows == 8 and dataset[0]["chosen"][-1]["role"] == "assistant"


def test_a_researcher_creates_and_downloads_a_snapshot(judged, daphne_url, page, tmp_path):  # noqa: F811
    log_in(page, daphne_url, "rita")
    page.goto(f"{daphne_url}/c/helpful/export/")
    page.select_option("#ex-shape", "rankings")
    page.fill("#snapshot-name", "first-cut")
    page.get_by_role("button", name="Create snapshot").click()
    expect(page.locator("p.notice")).to_contain_text("Snapshot first-cut (v1) created: 8 rows")
    snapshot = Snapshot.objects.get()
    assert (snapshot.shape, snapshot.format) == ("rankings", "jsonl")
    table = page.get_by_test_id("snapshots")
    expect(table).to_contain_text("first-cut")
    expect(table.locator("code.hash")).to_have_attribute("title", snapshot.content_hash)
    with page.expect_download() as download:
        table.get_by_role("link", name="Download").click()
    assert len(download.value.path().read_text().splitlines()) == 8
    page.fill("#snapshot-name", "first-cut")  # a taken name: refused, and said so
    page.get_by_role("button", name="Create snapshot").click()
    expect(page.get_by_role("alert")).to_contain_text("already has a snapshot named")
