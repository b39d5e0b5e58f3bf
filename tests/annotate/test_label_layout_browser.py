"""The labeling page at 1280x800 and on a 390x844 phone: decision controls in view and never under the sticky bar,
a chosen response that stands out (and is announced), guidelines that get out of the way, capped long responses."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.models import Campaign
from tests.annotate.browser import DESKTOP, PHONE, log_in, no_sideways_scroll, page, uncovered  # noqa: F401  (the page fixture)
from tests.conftest import join, make_campaign, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = "A long answer that goes on. " * 400


@pytest.fixture
def long_pairwise(db):
    campaign = Campaign.objects.create(name="Long", slug="long", task_type="pairwise", overlap=1, instructions="# Guidelines\n\n" + "Read both answers. " * 80)
    import_prompts(campaign, [{"external_id": f"p{i}", "text": f"Question {i}? " * 20} for i in range(3)])
    import_responses(campaign, [{"prompt": f"p{i}", "model": m, "text": LONG if m == "m1" else "Short."} for i in range(3) for m in ("m1", "m2")])
    join(make_user("alice"), campaign, "labeler")
    return campaign


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_pairwise_controls_are_in_view_and_the_choice_stands_out(long_pairwise, live_server, page, viewport):  # noqa: F811
    page.set_viewport_size(viewport)
    log_in(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/c/long/label/")
    for choice in ("a", "tie", "b", "bad"):
        assert uncovered(page, f'[data-choice="{choice}"]'), choice
    assert uncovered(page, '[data-testid="submit"]')
    first_response_top = page.evaluate("document.querySelector('.response').getBoundingClientRect().top")
    assert first_response_top < page.evaluate("document.querySelector('.actions').getBoundingClientRect().top")  # on the first screen
    expect(page.get_by_test_id("guidelines")).to_have_attribute("open", "")
    a = page.locator('[data-choice="a"]')
    a.click()
    expect(a).to_have_attribute("aria-pressed", "true")
    expect(page.locator('[data-choice="b"]')).to_have_attribute("aria-pressed", "false")
    cards = page.locator(".response")
    expect(cards.nth(0)).to_have_class("response preferred")
    expect(cards.nth(1)).to_have_class("response not-preferred")
    borders = cards.evaluate_all("els => els.map(e => getComputedStyle(e).borderTopColor)")
    assert borders[0] != borders[1]
    # the long response is capped, with a way to read it all
    long_card = page.locator(".response", has_text="goes on").first
    show_all = long_card.get_by_role("button", name="Show all")
    expect(show_all).to_be_visible()
    show_all.click()
    assert long_card.locator(".response-text").evaluate("e => e.scrollHeight <= e.clientHeight + 1")
    assert no_sideways_scroll(page)
    if viewport is PHONE:
        assert a.evaluate("e => e.getBoundingClientRect().height") >= 44  # a finger's size
        expect(a.locator("kbd")).to_be_hidden()  # no keyboard hints on a phone
    expect(page.get_by_test_id("wanted-count")).to_have_text("3")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("done-count")).to_have_text("1")
    expect(page.get_by_test_id("wanted-count")).to_have_text("2")  # moves with every judgement
    expect(page.get_by_test_id("guidelines")).not_to_have_attribute("open", "")  # collapsed after the first task
    page.reload()
    expect(page.get_by_test_id("guidelines")).not_to_have_attribute("open", "")  # and remembered for the campaign
    page.get_by_test_id("skip").click()  # no console error on a skip (checked by the page fixture)
    expect(page.get_by_test_id("done-count")).to_have_text("1")


def test_the_first_ranked_row_offers_no_move_up_or_tie(live_server, page):  # noqa: F811
    campaign = make_campaign("rank3", task_type="ranking", k=3, prompts=1, overlap=1, models=("a", "b", "c"))
    join(make_user("alice"), campaign, "labeler")
    log_in(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/c/rank3/label/")
    page.keyboard.press("2")
    page.keyboard.press("1")
    rows = page.get_by_test_id("rank-list").locator("li")
    expect(rows).to_have_count(2)
    first_row_buttons = rows.nth(0).locator("button")
    expect(first_row_buttons).to_have_count(2)  # present, and hidden for real (no CSS display rule overrides `hidden`)
    expect(first_row_buttons.nth(0)).to_be_hidden()
    expect(first_row_buttons.nth(1)).to_be_hidden()
    expect(rows.nth(1).get_by_role("button", name="Move up")).to_be_visible()
    rows.nth(1).get_by_role("button", name="Move up").click()
    expect(rows.nth(0)).to_contain_text("Response A")


@pytest.mark.parametrize(("viewport", "hint", "not_hint"), [(DESKTOP, "Press 1…3 in order of preference", "Tap"), (PHONE, "Tap the responses", "Press")],
                         ids=["desktop", "phone"])
def test_the_ranking_hint_speaks_of_keys_on_a_desktop_and_taps_on_a_phone(live_server, page, viewport, hint, not_hint):  # noqa: F811
    page.set_viewport_size(viewport)
    campaign = make_campaign("rank3", task_type="ranking", k=3, prompts=1, overlap=1, models=("a", "b", "c"))
    join(make_user("alice"), campaign, "labeler")
    log_in(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/c/rank3/label/")
    expect(page.locator("p.hint")).to_contain_text(hint, use_inner_text=True)  # innerText: what is rendered, not hidden spans
    expect(page.locator("p.hint")).not_to_contain_text(not_hint, use_inner_text=True)
