from django.contrib.auth import views as auth_views
from django.urls import path

from annotate.web import admin, campaign, compression, exports, labeling, models, runs
from annotate.web.login import ThrottledLoginView

urlpatterns = [
    path("", labeling.home, name="home"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("c/<slug:slug>/", campaign.overview, name="campaign"),
    path("c/<slug:slug>/rounds/", campaign.rounds_page, name="campaign-rounds"),
    path("c/<slug:slug>/runs/", campaign.runs_partial, name="campaign-runs"),
    path("c/<slug:slug>/generate/", campaign.start_generation, name="start-generation"),
    path("c/<slug:slug>/runs/<str:kind>/start/", campaign.start_run, name="start-run"),
    path("runs/<int:run_id>/", campaign.run_page, name="run"),
    path("runs/<int:run_id>/cancel/", campaign.cancel_run, name="cancel-run"),
    path("runs/<int:run_id>/state/", runs.run_state, name="run-state"),
    path("runs/<int:run_id>/metrics/", runs.run_metrics, name="run-metrics"),
    path("c/<slug:slug>/label/", labeling.label, name="label"),
    path("tasks/<int:task_id>/submit/", labeling.submit, name="submit"),
    path("tasks/<int:task_id>/skip/", labeling.skip, name="skip"),
    # Campaign admin pages (views_admin)
    path("campaigns/new/", admin.create_campaign, name="campaign-create"),
    path("campaigns/preview/", admin.preview_markdown, name="campaign-preview"),
    path("c/<slug:slug>/settings/", admin.campaign_settings, name="campaign-settings"),
    path("c/<slug:slug>/status/", admin.campaign_status, name="campaign-status"),
    path("c/<slug:slug>/import/", admin.import_file, name="campaign-import"),
    path("c/<slug:slug>/tasks/", admin.task_list, name="campaign-tasks"),
    path("c/<slug:slug>/tasks/<int:task_id>/gold/", admin.gold_answer, name="campaign-gold"),
    path("c/<slug:slug>/labelers/", admin.labeler_list, name="campaign-labelers"),
    path("c/<slug:slug>/labelers/<int:user_id>/", admin.labeler_action, name="campaign-labeler"),
    # Exports and snapshots (web/exports.py; the download itself is the API's streamed export)
    path("c/<slug:slug>/export/", exports.export_page, name="campaign-export"),
    path("c/<slug:slug>/export/preview/", exports.export_preview, name="campaign-export-preview"),
    path("c/<slug:slug>/export/snapshots/", exports.create_snapshot, name="campaign-snapshot-create"),
    # Optimised models (views_optimize)
    path("c/<slug:slug>/optimized/", compression.optimized, name="campaign-optimized"),
    path("c/<slug:slug>/optimized/start/", compression.start_optimize, name="start-optimize"),
    # The model registry (staff)
    path("models/", models.registry, name="models"),
]
