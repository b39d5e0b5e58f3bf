"""One look on every page: at 390 px no page scrolls sideways (long prompts, names and tables included), error pages are
styled with a way back, and no page logs a console error."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.models import Run
from tests.annotate.browser import PHONE, daphne_url, log_in, no_sideways_scroll, overflowing, page  # noqa: F401  (fixtures)
from tests.conftest import join, make_campaign, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_WORD = "Supercalifragilistic" * 15


@pytest.fixture
def crowded(db, monkeypatch, tmp_path):
    """A campaign with a prompt, a response and a labeler name that have no place to break, and a finished run."""
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    campaign = make_campaign("helpful", prompts=2, overlap=2)
    import_prompts(campaign, [{"external_id": "long-" + "x" * 60, "text": LONG_WORD}])
    import_responses(campaign, [{"prompt": "long-" + "x" * 60, "model": m, "text": LONG_WORD} for m in ("m1", "m2")])
    carol = join(make_user("carol", is_staff=True), campaign, "admin")
    join(make_user("labeler-with-a-very-long-name-" + "y" * 40), campaign, "labeler")
    join(make_user("alice"), campaign, "labeler")
    run = Run.objects.create(kind="reward", campaign=campaign, created_by=carol, status="succeeded", params={"base_model": LONG_WORD},
                             result={"model": "rm-1", "metrics": {"eval/accuracy": 0.9}}, log_tail=LONG_WORD)
    add_a_round(campaign, run)
    return run


def add_a_round(campaign, run) -> None:
    """A round-1 policy with evaluation figures, long answers side by side and reward/KL curves (the round report page)."""
    from annotate.models import ModelVersion, RunMetric

    RunMetric.objects.bulk_create([RunMetric(run=run, step=s, name=name, value=0.1 * s) for s in range(3) for name in ("objective/scores", "objective/kl")])
    old = ModelVersion.objects.create(name="r0-" + LONG_WORD[:190], kind="policy", checkpoint_path="x", round=0, metadata={"campaign": campaign.slug})
    example = {"prompt_index": 0, "prompt_id": "q0", "prompt": LONG_WORD, "previous": {"text": LONG_WORD, "score": 0.1}, "new": {"text": LONG_WORD, "score": 0.2}}
    evaluation = {"prompts": 16, "reward_mean": 0.4, "previous_reward_mean": 0.1, "kl": 2.5, "mean_length": 30.0, "eos_share": 0.9,
                  "rm_win_rate": 0.7, "examples": [example] * 3}
    ModelVersion.objects.create(name="r1-" + LONG_WORD[:190], kind="policy", checkpoint_path="x", round=1, parent=old, run=run,
                                metadata={"campaign": campaign.slug, "method": "ppo", "evaluation": evaluation})


PAGES = ["/", "/c/helpful/", "/c/helpful/export/", "/c/helpful/settings/", "/c/helpful/import/", "/c/helpful/tasks/",
         "/c/helpful/labelers/", "/c/helpful/optimized/", "/c/helpful/label/", "/c/helpful/rounds/", "/campaigns/new/"]


def test_no_page_scrolls_sideways_on_a_phone(crowded, daphne_url, page):  # noqa: F811
    page.set_viewport_size(PHONE)
    log_in(page, daphne_url, "carol")
    for path in [*PAGES, f"/runs/{crowded.pk}/"]:
        page.goto(daphne_url + path)
        expect(page.locator("main")).to_be_visible()
        assert no_sideways_scroll(page), (path, overflowing(page))


def test_error_pages_are_styled_with_a_way_back(crowded, daphne_url, page):  # noqa: F811
    page.set_viewport_size(PHONE)
    log_in(page, daphne_url, "alice")
    for path, heading in [("/c/helpful/settings/", "Not allowed"), ("/c/nowhere/", "Not found")]:
        page.goto(daphne_url + path)
        expect(page.get_by_test_id("error-page").get_by_role("heading")).to_have_text(heading)
        expect(page.get_by_test_id("error-page").get_by_role("link", name="Your campaigns")).to_be_visible()
        assert no_sideways_scroll(page)
        assert page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"  # the app's styles are on
        # the browser reports the document's own 403/404 status in the console: that one is expected
        page.console_errors[:] = [e for e in page.console_errors if "status of 40" not in e or not e.endswith(f"({daphne_url}{path})")]
