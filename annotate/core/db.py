"""Surviving a lost database connection: in requests (a 503 to retry, never a 500) and in long-lived loops.

PostgreSQL can drop a connection at any time (a restart, a failover, an operator's
`pg_terminate_backend`). The pool (settings.DATABASES) replaces a dropped idle connection
before lending it; these helpers cover the statement that was running when it dropped.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connections
from django.http import JsonResponse
from django.views import defaults

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a lost connection (or a full pool, or a busy SQLite file) raises: all worth trying again.
DISCONNECTS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 1


def reconnect() -> None:
    """Drop this thread's connections (a broken one goes back to the pool to be discarded)."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except DISCONNECTS:
            pass  # already gone: closing it is all we wanted


def retry_on_disconnect(fn: Callable[[], T], *, attempts: int = 5, first_wait: float = 0.5, what: str = "") -> T:
    """Call `fn` (one autocommit statement or a whole transaction), reconnecting and retrying after
    a lost connection, waiting `first_wait` seconds and doubling; the last failure is raised."""
    for attempt in range(attempts):
        try:
            return fn()
        except DISCONNECTS as exc:
            if attempt == attempts - 1:
                raise
            log.warning("database connection lost%s (%s); retrying", f" ({what})" if what else "", exc)
            reconnect()
            time.sleep(first_wait * 2**attempt)
    raise AssertionError("unreachable")


def unavailable_response(request, exc: Exception) -> JsonResponse:
    log.warning("%s %s: database unavailable (%s); answered 503", request.method, request.path, exc)
    response = JsonResponse({"code": "database_unavailable", "detail": "The database connection was lost; try again."}, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def server_error(request):
    """handler500: a lost connection anywhere (a middleware saving the session too) is a 503 to retry."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DISCONNECTS):
        reconnect()
        return unavailable_response(request, exc)
    return defaults.server_error(request)


class DatabaseUnavailableMiddleware:
    """A request whose database connection dropped (or found no free connection) is answered
    503 with Retry-After: the request did not complete, and sending it again is safe
    (judgement submits carry an idempotency key), so clients should retry, not report a bug."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DISCONNECTS):
            return None
        reconnect()
        return unavailable_response(request, exception)
