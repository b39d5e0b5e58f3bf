"""The login page, with a limit on failed passwords: a guessing client gets 429 after a few tries a minute.

Counted per username (a proxy in front hides the clients' addresses) in Django's cache, which every
process shares when REDIS_URL is set (config/settings.py); the limit and window are settings
(LOGIN_FAILURES_ALLOWED, LOGIN_FAILURE_WINDOW_SECONDS).
"""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache


class ThrottledLoginView(auth_views.LoginView):
    template_name = "annotate/login.html"

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")
        if recent_failures(username) >= settings.LOGIN_FAILURES_ALLOWED:
            # an unbound form: a bound one would check the password when the page shows its errors
            form = self.get_form_class()(request)
            response = self.render_to_response(self.get_context_data(form=form, throttled=True), status=429)
            response["Retry-After"] = str(settings.LOGIN_FAILURE_WINDOW_SECONDS)
            return response
        response = super().post(request, *args, **kwargs)
        if not request.user.is_authenticated:
            record_failure(username)
        return response


def recent_failures(username: str) -> int:
    """Failed passwords for this username within the window."""
    return cache.get(_failures_key(username), 0)


def record_failure(username: str) -> None:
    key = _failures_key(username)
    cache.add(key, 0, settings.LOGIN_FAILURE_WINDOW_SECONDS)
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, settings.LOGIN_FAILURE_WINDOW_SECONDS)


def _failures_key(username: str) -> str:
    # hashed: a username may hold characters a cache key may not
    return "login-failures:" + hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()
