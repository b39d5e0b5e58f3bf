"""Campaign pages for admins and researchers: progress, runs, starting a generation, a run's page with plots."""
from __future__ import annotations

from django.test import Client

from annotate.models import ModelVersion, Run, RunMetric


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admins_see_progress_runs_and_the_generation_form(carol, campaign):
    page = browser(carol).get(f"/c/{campaign.slug}/").content.decode()
    assert 'data-testid="progress-remaining">10<' in page and "Start generation" in page and "No runs yet" in page


def test_researchers_see_the_page_without_the_form_and_labelers_are_refused(rita, alice, mallory, campaign):
    page = browser(rita).get(f"/c/{campaign.slug}/").content.decode()
    assert "Progress" in page and "Start generation" not in page
    assert browser(alice).get(f"/c/{campaign.slug}/").status_code == 403
    assert browser(mallory).get(f"/c/{campaign.slug}/").status_code == 404


def test_starting_a_generation_from_the_page_queues_a_run(carol, campaign, tiny_checkpoint):
    ModelVersion.objects.create(name="tiny-policy", kind="policy", checkpoint_path=str(tiny_checkpoint))
    data = {"models": ["tiny-policy"], "n_per_prompt": 2, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 16}
    response = browser(carol).post(f"/c/{campaign.slug}/generate/", data)
    assert response.status_code == 302
    run = Run.objects.get()
    assert (run.kind, run.status, run.params["n_per_prompt"], run.created_by) == ("generate", "queued", 2, carol)
    assert "queued" in browser(carol).get(f"/c/{campaign.slug}/runs/").content.decode()


def test_bad_generation_settings_re_render_the_form(carol, campaign):
    response = browser(carol).post(f"/c/{campaign.slug}/generate/", {"models": ["SmolLM2-135M-Instruct"], "n_per_prompt": 99, "temperature": 0.7, "top_p": 1, "max_new_tokens": 16})
    assert response.status_code == 422 and not Run.objects.exists()


def test_the_run_page_plots_metrics_and_cancels(carol, rita, campaign):
    run = Run.objects.create(kind="generate", campaign=campaign, status="running", created_by=carol)
    RunMetric.objects.bulk_create([RunMetric(run=run, step=s, name="loss", value=1 / (s + 1)) for s in range(10)])
    page = browser(rita).get(f"/runs/{run.pk}/").content.decode()
    assert "<svg" in page and "loss" in page and "Cancel</button>" not in page
    assert browser(carol).post(f"/runs/{run.pk}/cancel/").status_code == 302
    run.refresh_from_db()
    assert run.cancel_requested


def test_runs_of_other_campaigns_are_404(mallory, carol, campaign):
    run = Run.objects.create(kind="generate", campaign=campaign, created_by=carol)
    assert browser(mallory).get(f"/runs/{run.pk}/").status_code == 404


def test_reward_buttons_start_runs_and_explain_what_is_missing(carol, campaign):
    client = browser(carol)
    response = client.post(f"/c/{campaign.slug}/runs/reward/start/", {"base_model": "SmolLM2-135M-Instruct", "epochs": 1, "learning_rate": 1e-4, "aggregation": "all", "use_lora": "on"})
    run = Run.objects.get()
    assert response.status_code == 302 and run.kind == "reward" and run.params["use_lora"] is True
    page = client.post(f"/c/{campaign.slug}/runs/drift/start/", follow=True).content.decode()
    assert "no reward model has been trained" in page and Run.objects.count() == 1


def test_a_reward_run_page_shows_the_held_out_score_histogram(carol, campaign):
    run = Run.objects.create(kind="reward", campaign=campaign, status="succeeded", result={"chosen_scores": [1.0, 2.0, 1.5], "rejected_scores": [0.1, -0.5, 0.3]})
    page = browser(carol).get(f"/runs/{run.pk}/").content.decode()
    assert "chosen against rejected" in page and page.count("<svg") >= 1


def test_the_campaign_page_shows_the_reward_model_and_its_drift(carol, campaign):
    ModelVersion.objects.create(name="rm-1", kind="reward", metadata={"campaign": campaign.slug, "metrics": {"eval/accuracy": 0.91},
                                "drift": [{"agreement": 0.8, "pairs": 10}, {"agreement": 0.7, "pairs": 12}]})
    page = browser(carol).get(f"/c/{campaign.slug}/").content.decode()
    assert "rm-1" in page and "0.910" in page and "0.700" in page and "<svg" in page


def test_run_a_round_from_the_page_needs_judgements_first(carol, campaign):
    page = browser(carol).get(f"/c/{campaign.slug}/").content.decode()
    assert "No rounds yet" in page and "Run a round" in page
    response = browser(carol).post(f"/c/{campaign.slug}/runs/round/start/", {"round-base_model": "SmolLM2-135M-Instruct", "round-epochs": 1,
                                   "round-learning_rate": 1e-4, "round-aggregation": "all", "method": "ppo"})
    run = Run.objects.get()
    assert response.status_code == 302 and run.kind == "round" and run.params["method"] == "ppo"


def test_a_bad_reward_form_says_what_is_wrong(carol, campaign):
    page = browser(carol).post(f"/c/{campaign.slug}/runs/reward/start/", {"base_model": "SmolLM2-135M-Instruct", "epochs": 0,
                               "learning_rate": 1e-4, "aggregation": "all"}, follow=True).content.decode()
    assert "epochs:" in page and not Run.objects.exists()
