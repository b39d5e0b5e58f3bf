"""The round report page: per round its figures, the reward and KL curves of its optimisation, and evaluation
answers of the previous and new policy side by side (escaped); admins and researchers only."""
from __future__ import annotations

import pytest
from django.test import Client

from annotate.models import Campaign, ModelVersion, Run, RunMetric
from tests.conftest import join, make_user

pytestmark = pytest.mark.django_db

FIGURES = {"prompts": 16, "reward_mean": 0.4, "previous_reward_mean": 0.1, "kl": 2.5, "mean_length": 30.0, "eos_share": 0.9, "rm_win_rate": 0.7}
EXAMPLES = [{"prompt_index": 0, "prompt_id": "q0", "prompt": "Which fruit? مرحبا",
             "previous": {"text": "<script>alert('old')</script>", "score": -0.25}, "new": {"text": "A banana & a pear.", "score": 1.5}}]


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def report_campaign():
    """Round 1 made by a round run that recorded three iterations of reward and KL."""
    campaign = Campaign.objects.create(name="Report", slug="report", task_type="pairwise", responses_per_task=2, overlap=1)
    old = ModelVersion.objects.create(name="r0", kind="policy", checkpoint_path="x", round=0, metadata={"campaign": "report"})
    reward = ModelVersion.objects.create(name="rm1", kind="reward", checkpoint_path="x", metadata={"campaign": "report", "metrics": {"eval/accuracy": 0.75}})
    run = Run.objects.create(kind="round", campaign=campaign, status="succeeded")
    for step, (score, kl) in enumerate([(0.1, 0.0), (0.3, 0.02), (0.6, 0.05)]):
        RunMetric.objects.create(run=run, step=step, name="policy/objective/scores", value=score)
        RunMetric.objects.create(run=run, step=step, name="policy/objective/kl", value=kl)
    ModelVersion.objects.create(name="r1", kind="policy", checkpoint_path="x", round=1, parent=old, run=run,
                                metadata={"campaign": "report", "method": "ppo", "reward_model": reward.name,
                                          "evaluation": {**FIGURES, "examples": EXAMPLES}})
    return campaign


def test_the_page_shows_figures_curves_and_escaped_answers_side_by_side(report_campaign):
    carol = join(make_user("carol"), report_campaign, "admin")
    response = browser(carol).get("/c/report/rounds/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "0.750" in page and "0.400 (0.100)" in page and "2.5000" in page and "30.0 tokens, 0.90" in page and "0.70" in page
    assert page.count("<svg") == 1 and "mean reward" in page and "KL to the reference" in page  # one plot, two panels
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;old&#x27;)&lt;/script&gt;" in page
    assert "A banana &amp; a pear." in page and 'dir="auto">Which fruit? مرحبا<' in page
    assert "score 1.500" in page and "score -0.250" in page
    assert "waiting for judgements" in page
    assert 'href="/c/report/rounds/"' in browser(carol).get("/c/report/").content.decode()  # linked from the campaign page


def test_a_researcher_reads_it_a_labeler_is_refused_and_a_stranger_sees_nothing(report_campaign):
    assert browser(join(make_user("rita"), report_campaign, "researcher")).get("/c/report/rounds/").status_code == 200
    assert browser(join(make_user("alice"), report_campaign, "labeler")).get("/c/report/rounds/").status_code == 403
    assert browser(make_user("mallory")).get("/c/report/rounds/").status_code == 404


def test_without_rounds_the_page_says_so_and_what_to_do(db):
    campaign = Campaign.objects.create(name="Empty", slug="empty", task_type="pairwise", responses_per_task=2, overlap=1)
    page = browser(join(make_user("carol"), campaign, "admin")).get("/c/empty/rounds/").content.decode()
    assert "No rounds yet" in page and "run a round from the" in page and "<svg" not in page


def test_a_policy_without_evaluation_or_curves_says_what_is_missing(report_campaign):
    policy = ModelVersion.objects.get(name="r1")
    policy.metadata.pop("evaluation")
    policy.save()
    RunMetric.objects.all().delete()
    page = browser(join(make_user("carol"), report_campaign, "admin")).get("/c/report/rounds/").content.decode()
    assert "not evaluated" in page and "No per-iteration reward or KL recorded" in page and "No evaluation answers stored" in page


def test_a_policy_evaluated_without_a_reward_model_shows_the_figures_it_has(report_campaign):
    policy = ModelVersion.objects.get(name="r1")
    policy.metadata["evaluation"].update(reward_mean=None, previous_reward_mean=None, rm_win_rate=None)
    policy.save()
    carol = join(make_user("carol"), report_campaign, "admin")
    page = browser(carol).get("/c/report/rounds/").content.decode()
    assert "— (no reward model to score with)" in page and "2.5000" in page and "30.0 tokens, 0.90" in page
    assert "— (no reward model) on 16 prompts" in browser(carol).get("/c/report/").content.decode()
