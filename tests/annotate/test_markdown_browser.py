"""Model output as sanitised Markdown in Chromium: code and tables rendered, scripts inert, right-to-left text in its own direction;
a campaign can switch to plain text."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.models import Campaign
from tests.annotate.browser import log_in, no_sideways_scroll, page  # noqa: F401  (the page fixture)
from tests.conftest import join, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MARKDOWN = (
    "Here is code:\n\n```python\nprint('" + "x" * 300 + "')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "<script>window.pwned = true</script><b onclick=\"window.pwned = true\">bold</b> <svg onload=\"window.pwned = true\"></svg>"
)
ARABIC = "مرحبا بالعالم، هذا جواب طويل \u202e reversed?"


def campaign_with(slug: str, markdown_text: bool) -> Campaign:
    campaign = Campaign.objects.create(name=slug, slug=slug, task_type="pairwise", overlap=1, markdown_text=markdown_text)
    import_prompts(campaign, [{"external_id": "p0", "text": "שלום? Say hello"}])
    import_responses(campaign, [{"prompt": "p0", "model": "m1", "text": MARKDOWN}, {"prompt": "p0", "model": "m2", "text": ARABIC}])
    join(make_user(f"alice-{slug}"), campaign, "labeler")
    return campaign


def test_responses_render_as_markdown_with_scripts_inert_and_rtl_direction(live_server, page):  # noqa: F811
    campaign_with("md", markdown_text=True)
    log_in(page, live_server.url, "alice-md")
    page.goto(f"{live_server.url}/c/md/label/")
    code_card = page.locator(".response", has_text="Here is code")
    rtl_card = page.locator(".response", has_text="مرحبا")
    code = code_card.locator("pre code")
    expect(code).to_contain_text("print(")
    assert "monospace" in code.evaluate("e => getComputedStyle(e).fontFamily")
    expect(code_card.locator("table td")).to_have_count(2)
    expect(code_card.locator("b")).to_have_text("bold")
    assert code_card.locator("script, svg, [onclick]").count() == 0  # the sanitiser took them out
    code_card.locator("b").click()
    assert page.evaluate("window.pwned") is None
    text = rtl_card.get_by_test_id("response-text")
    expect(text).to_have_attribute("dir", "auto")
    assert text.evaluate("e => getComputedStyle(e.querySelector('p') || e).direction") == "rtl"
    assert page.locator(".prompt [dir=auto]").evaluate("e => getComputedStyle(e).unicodeBidi") in ("isolate", "plaintext")
    assert no_sideways_scroll(page)  # the long code line wraps


def test_a_plain_text_campaign_shows_the_markdown_as_written(live_server, page):  # noqa: F811
    campaign_with("plain", markdown_text=False)
    log_in(page, live_server.url, "alice-plain")
    page.goto(f"{live_server.url}/c/plain/label/")
    card = page.locator(".response", has_text="Here is code")
    expect(card.get_by_test_id("response-text")).to_contain_text("```python")
    expect(card.get_by_test_id("response-text")).to_contain_text("<script>window.pwned = true</script>")
    assert card.locator("pre, table, script, b").count() == 0
    assert page.evaluate("window.pwned") is None
