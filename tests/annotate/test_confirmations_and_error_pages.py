"""A created campaign is confirmed; 403 and 404 are the app's own pages with a way back."""
from __future__ import annotations

from django.test import Client

from tests.annotate.test_admin_pages import SETTINGS
from tests.conftest import make_user


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_creating_a_campaign_says_so_on_the_next_page(db):
    page = browser(make_user("sam", is_staff=True)).post("/campaigns/new/", SETTINGS, follow=True).content.decode()
    assert 'role="status" data-testid="message">Campaign' in page and "created as a draft" in page


def test_403_and_404_are_styled_pages_with_navigation(alice, campaign):
    forbidden = browser(alice).get(f"/c/{campaign.slug}/settings/")
    missing = browser(alice).get("/c/no-such-campaign/")
    assert (forbidden.status_code, missing.status_code) == (403, 404)
    for response, heading in ((forbidden, "Not allowed"), (missing, "Not found")):
        page = response.content.decode()
        assert f"<h1>{heading}</h1>" in page and "annotate/app.css" in page and ">Your campaigns</a>" in page
