"""A response that fails after it started must reach the client as a broken download, not a short file.

A streamed export that fails half-way cannot change its status any more; what it can do is end
without HTTP's final chunk, which every client reports as an error.

ASGI: servers that follow the spec (uvicorn, granian) close the connection when the application
raises after the response started. daphne does not: it tries to send a 500 on top of the started
response, fails, and leaves the client waiting for ever. For daphne `abort_failed_responses` closes
the connection itself.

WSGI has no way to abort a started response, and granian's WSGI interface (2.x) ends the body of an
iterator that raises with the final chunk, as if it were complete. So under WSGI `can_abort` is
false and a response that may fail half-way is built whole before its first byte is sent.
"""
from __future__ import annotations

import functools
import logging

from django.core.handlers.wsgi import WSGIRequest

logger = logging.getLogger(__name__)


def abort_failed_responses(app):
    async def wrapped(scope, receive, send):
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception:
            if started:
                logger.error("response failed after it started: closing the connection without its end")
                _close_daphne_connection(send)
            raise

    return wrapped


def can_abort(request) -> bool:
    """Whether a response to this request that fails after its first byte ends broken (ASGI), not short (WSGI)."""
    return not isinstance(getattr(request, "_request", request), WSGIRequest)  # a DRF Request wraps Django's


def _close_daphne_connection(send) -> None:
    """daphne's `send` is partial(server.handle_reply, protocol); its channel holds the TCP transport."""
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    abort = getattr(transport, "loseConnection", None)  # after what was sent, without the final chunk
    if abort is not None:
        abort()
