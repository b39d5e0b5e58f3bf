"""Who a campaign admin may add, deactivate or demote (annotate.campaigns.members), on every path: the members
and labelers API and the labelers page."""
from __future__ import annotations

import pytest
from django.test import Client

from annotate.models import Campaign, Membership
from tests.conftest import api_client, join, make_campaign, make_user


@pytest.fixture
def dana(campaign):
    """A campaign admin who is not staff."""
    return join(make_user("dana"), campaign, "admin")


@pytest.fixture
def eve(db):
    """A user in a campaign dana has nothing to do with."""
    elsewhere = Campaign.objects.create(name="Elsewhere", slug="elsewhere")
    return join(make_user("eve"), elsewhere, "labeler")


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_adding_an_existing_stranger_answers_as_for_a_name_that_does_not_exist(dana, eve):
    client = api_client(dana)
    stranger = client.post("/api/v1/campaigns/helpful/members/", {"username": "eve", "role": "labeler"}, format="json")
    nobody = client.post("/api/v1/campaigns/helpful/members/", {"username": "ghost", "role": "labeler"}, format="json")
    assert stranger.status_code == nobody.status_code == 400
    assert stranger.json() == nobody.json()
    assert not Membership.objects.filter(user=eve, campaign__slug="helpful").exists()


def test_the_labelers_endpoint_and_page_create_only_free_names(dana, eve):
    taken = api_client(dana).post("/api/v1/campaigns/helpful/labelers/", {"username": "eve"}, format="json")
    assert taken.status_code == 400 and taken.json()["field"] == "username"
    assert "eve" not in taken.json()["detail"]
    page = browser(dana).post("/c/helpful/labelers/", {"username": "eve", "role": "labeler"})
    assert page.status_code == 422 and "cannot be added here" in page.content.decode()
    assert not Membership.objects.filter(user=eve, campaign__slug="helpful").exists()
    fresh = api_client(dana).post("/api/v1/campaigns/helpful/labelers/", {"username": "frank"}, format="json")
    assert fresh.status_code == 201 and fresh.json()["created_user"]


def test_an_admin_may_add_people_from_another_campaign_they_run(dana, eve):
    join(dana, Campaign.objects.get(slug="elsewhere"), "admin")
    response = api_client(dana).post("/api/v1/campaigns/helpful/members/", {"username": "eve", "role": "researcher"}, format="json")
    assert response.status_code == 201
    assert Membership.objects.get(user=eve, campaign__slug="helpful").role == "researcher"


def test_staff_may_add_anyone(carol, eve):
    response = api_client(carol).post("/api/v1/campaigns/helpful/members/", {"username": "eve", "role": "labeler"}, format="json")
    assert response.status_code == 201


@pytest.mark.parametrize("path", ["members", "labelers"])
def test_the_last_admin_cannot_be_demoted_through_adding(carol, campaign, path):
    response = api_client(carol).post(f"/api/v1/campaigns/helpful/{path}/", {"username": "carol", "role": "labeler"}, format="json")
    assert response.status_code == 400 and "no admin left" in str(response.json())
    assert Membership.objects.get(user=carol, campaign=campaign).role == "admin"


def test_an_admin_deactivates_only_accounts_made_through_their_campaigns(dana, alice, campaign):
    client = api_client(dana)
    made = client.post("/api/v1/campaigns/helpful/labelers/", {"username": "frank"}, format="json").json()
    assert made["created_user"]
    assert client.patch("/api/v1/campaigns/helpful/labelers/frank/", {"is_active": False}, format="json").status_code == 200
    # alice's account has no record of being made here (staff or adduser made it): for staff
    refused = client.patch("/api/v1/campaigns/helpful/labelers/alice/", {"is_active": False}, format="json")
    assert refused.status_code == 403 and "not created through your campaigns" in refused.json()["detail"]
    alice.refresh_from_db()
    assert alice.is_active


def test_an_account_made_here_that_joined_another_campaign_is_for_staff(dana, campaign):
    api_client(dana).post("/api/v1/campaigns/helpful/labelers/", {"username": "frank"}, format="json")
    join(Membership.objects.get(user__username="frank").user, make_campaign("third", prompts=1), "labeler")
    response = api_client(dana).patch("/api/v1/campaigns/helpful/labelers/frank/", {"is_active": False}, format="json")
    assert response.status_code == 403 and "campaigns you do not administer" in response.json()["detail"]
