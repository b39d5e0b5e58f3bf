"""The export page's preview and snapshot form, and a run's JSON state, through Django's test client: answers and refusals."""
from __future__ import annotations

import json

from django.test import Client

from annotate.models import Run, RunMetric, Snapshot
from tests.annotate.test_exports import judge_all


def browser(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_preview_counts_rows_per_shape_and_names_a_bad_field(alice, bob, rita, campaign):
    judge_all(alice, campaign, "m1")
    judge_all(bob, campaign, "m2")
    url = f"/c/{campaign.slug}/export/preview/"
    assert 'data-testid="row-count">10<' in browser(rita).get(url, {"shape": "pairs"}).content.decode()
    assert 'data-testid="row-count">5<' in browser(rita).get(url, {"shape": "tasks"}).content.decode()
    bad = browser(rita).get(url, {"min_agreement": "2"})
    assert bad.status_code == 422 and "min_agreement" in bad.content.decode()


def test_only_readers_of_the_campaign_see_the_export_page(alice, rita, mallory, campaign):
    assert browser(rita).get(f"/c/{campaign.slug}/export/").status_code == 200
    assert browser(alice).get(f"/c/{campaign.slug}/export/").status_code == 403
    assert browser(mallory).get(f"/c/{campaign.slug}/export/").status_code == 404
    assert browser(alice).post(f"/c/{campaign.slug}/export/snapshots/", {"name": "x"}).status_code == 403


def test_a_snapshot_from_the_page_is_pseudonymous_and_a_bad_name_is_refused(carol, campaign, artifacts):
    client = browser(carol)
    client.post(f"/c/{campaign.slug}/export/snapshots/", {"name": "v1", "shape": "rankings", "format": "jsonl", "identities": "real"})
    snapshot = Snapshot.objects.get()
    assert (snapshot.name, snapshot.shape) == ("v1", "rankings") and "identities" not in snapshot.filters
    page = client.post(f"/c/{campaign.slug}/export/snapshots/", {"name": "no spaces"}, follow=True).content.decode()
    assert "Snapshot not created" in page and Snapshot.objects.count() == 1


def test_a_runs_state_is_small_json_for_readers_only(alice, rita, mallory, carol, campaign):
    run = Run.objects.create(kind="reward", campaign=campaign, created_by=carol)
    state = json.loads(browser(rita).get(f"/runs/{run.pk}/state/").content)
    assert state["status"] == "queued" and not state["finished"] and "waiting for a worker" in state["message"]
    assert browser(alice).get(f"/runs/{run.pk}/state/").status_code == 403
    assert browser(mallory).get(f"/runs/{run.pk}/state/").status_code == 404


def test_a_runs_state_counts_its_metric_points_and_hides_tracebacks_from_non_staff(rita, campaign, carol):
    run = Run.objects.create(kind="reward", campaign=campaign, created_by=carol, status="running",
                             error="boom\n\nTraceback (most recent call last):\n  File \"/srv/arbiter/secret.py\"")
    RunMetric.objects.bulk_create([RunMetric(run=run, step=s, name="loss", value=1.0 / (s + 1)) for s in range(3)])
    state = json.loads(browser(rita).get(f"/runs/{run.pk}/state/").content)
    assert state["metric_points"] == 3 and state["error"] == "boom"  # as the page shows it
    page = browser(rita).get(f"/runs/{run.pk}/").content.decode()
    assert 'data-metric-points="3"' in page and 'data-metrics-url="/runs/' in page


def test_a_runs_metrics_fragment_is_its_plots_alone_for_readers_only(alice, rita, mallory, carol, campaign):
    run = Run.objects.create(kind="ppo", campaign=campaign, created_by=carol, status="running")
    assert "No metrics recorded" in browser(rita).get(f"/runs/{run.pk}/metrics/").content.decode()
    RunMetric.objects.bulk_create([RunMetric(run=run, step=s, name="objective/kl", value=0.1 * s) for s in range(3)])
    fragment = browser(rita).get(f"/runs/{run.pk}/metrics/").content.decode()
    assert fragment.startswith('<section class="card" id="run-metrics"') and fragment.count("<svg") == 1 and "<html" not in fragment
    assert browser(alice).get(f"/runs/{run.pk}/metrics/").status_code == 403
    assert browser(mallory).get(f"/runs/{run.pk}/metrics/").status_code == 404


def test_a_running_rounds_state_and_page_show_the_time_of_each_phase_done_so_far(rita, carol, campaign):
    from annotate.jobs.engine import RunContext
    from annotate.runs.rounds import PhaseContext

    run = Run.objects.create(kind="round", campaign=campaign, created_by=carol, status="running")
    ctx = RunContext(run)
    seconds: dict[str, float] = {}
    PhaseContext(ctx, "reward").done(seconds)
    state = json.loads(browser(rita).get(f"/runs/{run.pk}/state/").content)
    assert not state["finished"] and f"phases done: reward {seconds['reward']:.1f} s" in state["times"]
    PhaseContext(ctx, "policy").done(seconds)
    page = browser(rita).get(f"/runs/{run.pk}/").content.decode()
    assert "phases done: reward" in page and f"policy {seconds['policy']:.1f} s" in page
