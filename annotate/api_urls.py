from django.urls import path
from django.urls import include

from . import api_admin
from . import api, api_dashboard, api_runs
from . import api_exports
from . import api_optimize

urlpatterns = [
    # the labelers' hot path first
    path("campaigns/<slug:slug>/tasks/next/", api.next_task, name="api-next-task"),
    path("tasks/<int:task_id>/judgements/", api.submit_judgement, name="api-judgements"),
    path("campaigns/", api.campaigns, name="api-campaigns"),
    path("campaigns/<slug:slug>/", api.campaign_detail, name="api-campaign"),
    path("campaigns/<slug:slug>/members/", api.members, name="api-members"),
    path("campaigns/<slug:slug>/prompts/", api.prompts, name="api-prompts"),
    path("campaigns/<slug:slug>/responses/", api.responses, name="api-responses"),
    path("campaigns/<slug:slug>/progress/", api.progress, name="api-progress"),
    path("campaigns/<slug:slug>/dashboard/", api_dashboard.campaign_dashboard, name="api-campaign-dashboard"),
    path("tasks/<int:task_id>/skip/", api.skip_task, name="api-skip"),
    path("campaigns/<slug:slug>/runs/", api_runs.campaign_runs, name="api-campaign-runs"),
    path("runs/<int:run_id>/", api_runs.run_detail, name="api-run"),
    path("runs/<int:run_id>/cancel/", api_runs.run_cancel, name="api-run-cancel"),
    path("models/", api_runs.models, name="api-models"),
    path("campaigns/<slug:slug>/export/", api_exports.export, name="api-export"),
    path("campaigns/<slug:slug>/snapshots/", api_exports.snapshot_list, name="api-snapshots"),
    path("campaigns/<slug:slug>/snapshots/<slug:name>/download/", api_exports.snapshot_download, name="api-snapshot-download"),
    path("campaigns/<slug:slug>/data/", include(api_exports.data_router.urls)),
    path("models/<int:model_id>/score/", api_runs.score, name="api-model-score"),
    path("models/<int:model_id>/comparison/", api_optimize.comparison, name="api-model-comparison"),
    # Campaign admins (api_admin)
    path("campaigns/<slug:slug>/imports/", api_admin.file_import, name="api-imports"),
    path("campaigns/<slug:slug>/tasks/", api_admin.tasks, name="api-tasks"),
    path("tasks/<int:task_id>/gold/", api_admin.mark_gold, name="api-gold"),
    path("campaigns/<slug:slug>/labelers/", api_admin.labeler_list, name="api-labelers"),
    path("campaigns/<slug:slug>/labelers/<str:username>/", api_admin.labeler_detail, name="api-labeler"),
]
