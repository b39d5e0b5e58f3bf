"""The demo runs the whole loop: simulated judgements (marked by their accounts) so training, rounds and exports work at once;
buttons that cannot work yet say why."""
from __future__ import annotations

from io import StringIO

from django.core.management import call_command
from django.test import Client

from annotate.exports.export import preview
from annotate.exports.options import ExportFilters, ExportOptions
from annotate.exports.training_data import ranked_judgements
from annotate.labeling import assignment
from annotate.models import Campaign, Judgement
from annotate.runs.readiness import training_blocker
from training.preferences import PreferenceOptions, build_preference_dataset


def test_load_demo_says_what_it_made_and_simulates_enough_judgements_to_train(db):
    out = StringIO()
    call_command("load_demo", stdout=out)
    text = out.getvalue()
    assert "Campaign helpfulness-ab (Pairwise (A/B), 20 tasks): created, 20 simulated judgements" in text
    assert "Campaign ranking-k4 (" in text and "simulated-1" in text
    assert set(Judgement.objects.values_list("labeler__username", flat=True)) == {"simulated-1", "simulated-2"}
    assert set(Judgement.objects.values_list("labeler__first_name", flat=True)) == {"Simulated labeler"}
    for campaign in Campaign.objects.all():
        assert training_blocker(campaign) is None
        dataset = build_preference_dataset(ranked_judgements(campaign), PreferenceOptions())  # what a reward run builds; raises if too few
        assert len(dataset.train) >= 8 and len(dataset.eval) >= 2
        assert preview(campaign, ExportOptions(), ExportFilters())["rows"] > 0
        alice = campaign.memberships.get(user__username="alice").user
        assert assignment.next_task_for(alice, campaign) is not None  # people still have work
    again = StringIO()
    call_command("load_demo", stdout=again)
    assert "already there" in again.getvalue() and Judgement.objects.count() == 20 + 20


def test_the_train_button_is_disabled_with_the_reason_until_there_are_judgements(rita, campaign):
    client = Client()
    client.force_login(rita)
    page = client.get(f"/c/{campaign.slug}/").content.decode()
    assert 'disabled title="Needs at least 10 judgements on 2 or more prompts' in page
    assert "so far 0 judgements on 0 prompts" in page
