"""Management commands: adduser prints a working token; load_demo is idempotent; reclaim_leases."""
from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotate.labeling import assignment
from annotate.models import Assignment, Campaign, Judgement, Membership, Task
from tests.conftest import join, make_campaign, make_user


def test_adduser_creates_a_member_and_prints_a_token_that_works(campaign):
    out = StringIO()
    call_command("adduser", "erin", "--role", "labeler", "--campaign", campaign.slug, stdout=out)
    token = next(line.split(": ")[1] for line in out.getvalue().splitlines() if line.startswith("token:"))
    assert Membership.objects.get(user__username="erin").role == "labeler"
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(f"/api/v1/campaigns/{campaign.slug}/tasks/next/").status_code == 200


def test_adduser_admin_without_campaign_may_create_campaigns(db):
    call_command("adduser", "boss", "--role", "admin", stdout=StringIO())
    from django.contrib.auth import get_user_model

    assert get_user_model().objects.get(username="boss").is_staff


def test_adduser_rejects_an_unknown_campaign(db):
    with pytest.raises(CommandError, match="No campaign"):
        call_command("adduser", "erin", "--role", "labeler", "--campaign", "nope", stdout=StringIO())


def test_load_demo_twice_gives_one_demo(db):
    call_command("load_demo", stdout=StringIO())
    counts = (Campaign.objects.count(), Task.objects.count(), Membership.objects.count())
    call_command("load_demo", stdout=StringIO())
    assert (Campaign.objects.count(), Task.objects.count(), Membership.objects.count()) == counts
    assert counts[1] == 20 + 10  # 40 responses in pairs, and in fours


def test_housekeeping_reclaims_lapsed_leases(db):
    campaign = make_campaign(prompts=1, overlap=1, lease_seconds=10)
    alice = join(make_user("alice"), campaign, "labeler")
    lease = assignment.next_task_for(alice, campaign)
    Assignment.objects.filter(pk=lease.assignment.pk).update(leased_until=lease.assignment.leased_at - timedelta(seconds=1))
    call_command("housekeeping", stdout=StringIO())
    assert Task.objects.get(pk=lease.task.pk).remaining == 1
    assert not Judgement.objects.exists()
