from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="annotate/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("c/<slug:slug>/label/", views.label, name="label"),
    path("tasks/<int:task_id>/submit/", views.submit, name="submit"),
    path("tasks/<int:task_id>/skip/", views.skip, name="skip"),
]
