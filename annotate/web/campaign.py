"""Campaign pages for admins and researchers: progress, runs, starting a generation, a run's page."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotate import access
from annotate.core.plots import histograms, metric_panels
from annotate.jobs import engine
from annotate.labeling import assignment
from annotate.models import Membership
from annotate.runs.endpoints import serving_of_run
from annotate.runs.readiness import training_blocker
from annotate.runs.registry import latest_reward_model
from annotate.runs.round_report import round_details
from annotate.runs.rounds import round_summaries
from annotate.stats.dashboard import dashboard_context
from annotate.web.run_forms import GenerationForm, RewardForm

ADMIN = (Membership.Role.ADMIN,)


@login_required
@require_GET
def overview(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    context = {"campaign": campaign, "progress": assignment.progress(campaign), **_runs_context(campaign), **dashboard_context(campaign)}
    context.update(_reward_context(campaign))
    context["rounds"] = round_summaries(campaign)
    if access.may_start(campaign, "generate"):
        context["form"] = GenerationForm(campaign=campaign)
    if access.may_start(campaign, "reward"):
        context["reward_form"] = RewardForm(campaign=campaign)
        context["round_form"] = RewardForm(prefix="round", campaign=campaign)
        context["reward_memory"] = context["reward_form"].memory_line("reward")
        context["round_memory"] = context["round_form"].memory_line("round")
        context["training_blocker"] = training_blocker(campaign)
    return render(request, "annotate/campaign.html", context)


@login_required
@require_GET
def rounds_page(request, slug):
    """The round report: per round its figures, its reward and KL curves, and evaluation answers side by side."""
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)  # model names: admins and researchers only
    details = round_details(campaign)
    rounds = [{**row, "curves": metric_panels(details[row["policy"]]["curves"]), "examples": details[row["policy"]]["examples"]}
              for row in round_summaries(campaign)]
    return render(request, "annotate/rounds.html", {"campaign": campaign, "rounds": rounds, "may_start_round": access.may_start(campaign, "round")})


@login_required
@require_GET
def runs_partial(request, slug):
    """The runs table alone, polled by htmx while a run is active."""
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    return render(request, "annotate/_runs.html", {"campaign": campaign, **_runs_context(campaign)})


@login_required
@require_POST
def start_generation(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    form = GenerationForm(request.POST, campaign=campaign)
    if form.is_valid():
        try:
            run = engine.start_run("generate", campaign=campaign, params=form.params(), user=request.user)
            return redirect("run", run_id=run.pk)
        except engine.InvalidParams as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
    context = {"campaign": campaign, "progress": assignment.progress(campaign), "form": form, **_runs_context(campaign), **dashboard_context(campaign)}
    context.update(_reward_context(campaign))
    return render(request, "annotate/campaign.html", context, status=422)


@login_required
@require_POST
def start_run(request, slug, kind):
    """The one-click runs of the campaign page (reward model, round, active selection, drift)."""
    campaign = access.campaign_for(request.user, slug, access.roles_to_start(kind))
    # reward and round take the reward form's choices (the round's under its own prefix); the others none
    form = RewardForm(request.POST, prefix="round" if kind == "round" else None, campaign=campaign) if kind in ("reward", "round") else None
    if form is not None and not form.is_valid():
        messages.error(request, "; ".join(f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()))
        return redirect("campaign", slug=slug)
    params = form.params() if form else {}
    if kind == "round":
        params = {"method": request.POST.get("method", "ppo"), "reward": params}
    try:
        run = engine.start_run(kind, campaign=campaign, params=params, user=request.user)
    except engine.InvalidParams as exc:
        messages.error(request, exc.message)
        return redirect("campaign", slug=slug)
    return redirect("run", run_id=run.pk)


@login_required
@require_GET
def run_page(request, run_id):
    run = access.run_as_seen_by(request.user, access.run_for(request.user, run_id))
    series = engine.metric_series(run)
    context: dict[str, Any] = {"run": run, "plots": metric_panels(series), "can_cancel": access.may_manage_run(request.user, run),
                               "metric_points": sum(len(points) for points in series.values()),  # run.js re-plots when it grows
                               "phase_times": engine.phase_times(run)}
    # the commands name server paths: for staff, who run the serving machines
    serving = access.sees_server_detail(request.user) and run.kind in ("ppo", "sft", "dpo", "rloo", "round") and run.status == "succeeded"
    context["serving"] = serving_of_run(run) if serving else []
    if run.kind == "reward" and run.result.get("chosen_scores"):
        context["score_histogram"] = histograms(
            {"chosen": run.result["chosen_scores"], "rejected": run.result["rejected_scores"]}, "Held-out reward scores"
        )
    return render(request, "annotate/run.html", context)


@login_required
@require_POST
def cancel_run(request, run_id):
    run = access.run_for(request.user, run_id)  # 404 for strangers first, then the kind's roles
    run = access.run_for(request.user, run_id, access.roles_to_start(run.kind))
    if not run.is_finished:
        engine.request_cancel(run)
    return redirect("run", run_id=run.pk)


def _runs_context(campaign) -> dict:
    # Reads do not write: runs whose worker died are failed by `manage.py housekeeping`, not here.
    runs = list(campaign.runs.select_related("created_by").order_by("-created_at")[:50])
    return {"runs": runs, "any_active": any(not r.is_finished for r in runs)}


def _reward_context(campaign) -> dict:
    """The current reward model, its held-out accuracy, and its agreement with newer human judgements."""
    version = latest_reward_model(campaign)
    if version is None:
        return {"reward_model": None}
    drift = version.metadata.get("drift", [])
    plot = metric_panels({"agreement with new judgements": [(i, p["agreement"]) for i, p in enumerate(drift, 1)]}) if len(drift) > 1 else None
    return {"reward_model": version, "reward_accuracy": version.metadata.get("metrics", {}).get("eval/accuracy"), "drift": drift, "drift_plot": plot}
