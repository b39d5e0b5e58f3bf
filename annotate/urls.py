from django.contrib.auth import views as auth_views
from django.urls import path

from . import views, views_admin, views_campaign
from . import views_optimize

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="annotate/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("c/<slug:slug>/", views_campaign.overview, name="campaign"),
    path("c/<slug:slug>/runs/", views_campaign.runs_partial, name="campaign-runs"),
    path("c/<slug:slug>/generate/", views_campaign.start_generation, name="start-generation"),
    path("c/<slug:slug>/runs/<str:kind>/start/", views_campaign.start_run, name="start-run"),
    path("runs/<int:run_id>/", views_campaign.run_page, name="run"),
    path("runs/<int:run_id>/cancel/", views_campaign.cancel_run, name="cancel-run"),
    path("c/<slug:slug>/label/", views.label, name="label"),
    path("tasks/<int:task_id>/submit/", views.submit, name="submit"),
    path("tasks/<int:task_id>/skip/", views.skip, name="skip"),
    # Campaign admin pages (views_admin)
    path("campaigns/new/", views_admin.create_campaign, name="campaign-create"),
    path("campaigns/preview/", views_admin.preview_markdown, name="campaign-preview"),
    path("c/<slug:slug>/settings/", views_admin.campaign_settings, name="campaign-settings"),
    path("c/<slug:slug>/status/", views_admin.campaign_status, name="campaign-status"),
    path("c/<slug:slug>/import/", views_admin.import_file, name="campaign-import"),
    path("c/<slug:slug>/tasks/", views_admin.task_list, name="campaign-tasks"),
    path("c/<slug:slug>/tasks/<int:task_id>/gold/", views_admin.gold_answer, name="campaign-gold"),
    path("c/<slug:slug>/labelers/", views_admin.labeler_list, name="campaign-labelers"),
    path("c/<slug:slug>/labelers/<int:user_id>/", views_admin.labeler_action, name="campaign-labeler"),
    # Optimised models (views_optimize)
    path("c/<slug:slug>/optimized/", views_optimize.optimized, name="campaign-optimized"),
    path("c/<slug:slug>/optimized/start/", views_optimize.start_optimize, name="start-optimize"),
]
