"""ASGI: a response that fails after it started is aborted, so the client sees a broken download.

A streamed export that fails half-way cannot change its status any more; what it can do is end
without HTTP's final chunk, which every client reports as an error. Servers that follow the ASGI
spec (uvicorn, granian) close the connection when the application raises after the response
started. daphne does not: it tries to send a 500 on top of the started response, fails, and leaves
the client waiting for ever. For daphne this wrapper closes the connection itself.
"""
from __future__ import annotations

import functools
import logging

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


def _close_daphne_connection(send) -> None:
    """daphne's `send` is partial(server.handle_reply, protocol); its channel holds the TCP transport."""
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    abort = getattr(transport, "loseConnection", None)  # after what was sent, without the final chunk
    if abort is not None:
        abort()
