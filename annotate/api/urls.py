from django.urls import include, path

from annotate.api import admin, compression, dashboard, endpoints, exports, labeling, models, rounds, runs

urlpatterns = [
    # the labelers' hot path first
    path("campaigns/<slug:slug>/tasks/next/", labeling.next_task, name="api-next-task"),
    path("tasks/<int:task_id>/judgements/", labeling.submit_judgement, name="api-judgements"),
    path("campaigns/", labeling.campaigns, name="api-campaigns"),
    path("campaigns/<slug:slug>/", labeling.campaign_detail, name="api-campaign"),
    path("campaigns/<slug:slug>/members/", labeling.members, name="api-members"),
    path("campaigns/<slug:slug>/prompts/", labeling.prompts, name="api-prompts"),
    path("campaigns/<slug:slug>/responses/", labeling.responses, name="api-responses"),
    path("campaigns/<slug:slug>/progress/", labeling.progress, name="api-progress"),
    path("campaigns/<slug:slug>/dashboard/", dashboard.campaign_dashboard, name="api-campaign-dashboard"),
    path("tasks/<int:task_id>/skip/", labeling.skip_task, name="api-skip"),
    path("campaigns/<slug:slug>/runs/", runs.campaign_runs, name="api-campaign-runs"),
    path("campaigns/<slug:slug>/rounds/", rounds.campaign_rounds, name="api-campaign-rounds"),
    path("runs/<int:run_id>/", runs.run_detail, name="api-run"),
    path("runs/<int:run_id>/cancel/", runs.run_cancel, name="api-run-cancel"),
    path("models/", models.model_collection, name="api-models"),  # GET: runs.registry_list
    path("campaigns/<slug:slug>/export/", exports.export, name="api-export"),
    path("campaigns/<slug:slug>/snapshots/", exports.snapshot_list, name="api-snapshots"),
    path("campaigns/<slug:slug>/snapshots/<slug:name>/download/", exports.snapshot_download, name="api-snapshot-download"),
    path("campaigns/<slug:slug>/data/", include(exports.data_router.urls)),
    path("models/<int:model_id>/score/", runs.score, name="api-model-score"),
    path("models/<int:model_id>/comparison/", compression.comparison, name="api-model-comparison"),
    path("models/<int:model_id>/serving/", endpoints.serving, name="api-model-serving"),
    path("models/<int:model_id>/served-by/", endpoints.served_by, name="api-model-served-by"),
    # Campaign admins (api_admin)
    path("campaigns/<slug:slug>/imports/", admin.file_import, name="api-imports"),
    path("campaigns/<slug:slug>/tasks/", admin.tasks, name="api-tasks"),
    path("tasks/<int:task_id>/gold/", admin.mark_gold, name="api-gold"),
    path("campaigns/<slug:slug>/labelers/", admin.labeler_list, name="api-labelers"),
    path("campaigns/<slug:slug>/labelers/<str:username>/", admin.labeler_detail, name="api-labeler"),
]
