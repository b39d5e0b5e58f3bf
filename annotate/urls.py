from django.contrib.auth import views as auth_views
from django.urls import path

from . import views, views_campaign

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
]
