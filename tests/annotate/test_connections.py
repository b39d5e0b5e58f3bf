"""Lost connections: websockets through Redis stay open, a dropped database connection costs a retry
(a 503), never a 500 or a stuck run, and nothing keeps a connection past the end of its work."""
from __future__ import annotations

import inspect
import os
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from channels_redis.utils import decode_hosts
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from redis.asyncio.connection import AbstractConnection

from annotate.realtime.consumers import campaign_group
from config.asgi import application

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/3"
PG_ONLY = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="kills server-side connections with pg_terminate_backend: PostgreSQL only"
)


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# -- websockets through Redis ----------------------------------------------------------------------

HOUR = 3600
SPEEDUP = 100  # every timing of the layer and of the client a hundred times shorter


@pytest.mark.django_db(transaction=True)
def test_a_quiet_websocket_through_redis_stays_open_for_an_hour(settings, monkeypatch, campaign, rita):
    """The failure: each websocket waits for events in 5 s blocking reads (BZPOPMIN); a client that
    times reads out at 5 s (redis 8's default) fails the first wait that ends empty, and daphne
    closes the socket with 1011. Here every wait and the client's read timeout are a hundred times
    shorter, in the configured ratio, and the socket lives through an hour's worth of waits."""
    layer_config = django_settings.CHANNEL_LAYERS["default"]
    if layer_config["BACKEND"] == "channels.layers.InMemoryChannelLayer":  # REDIS_URL unset: build the Redis one as settings would
        layer_config = {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": django_settings.REDIS_READ_TIMEOUT}]}}
    host = decode_hosts(layer_config["CONFIG"]["hosts"])[0].copy()
    # the read timeout the pinned client really uses: the configured one, or the client's default
    read_timeout = host.get("socket_timeout", inspect.signature(AbstractConnection.__init__).parameters["socket_timeout"].default)
    host["socket_timeout"] = None if read_timeout is None else read_timeout / SPEEDUP
    prefix = f"arbiter-test-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = {"default": {**layer_config, "CONFIG": {"hosts": [host], "prefix": prefix}}}
    monkeypatch.setattr(RedisChannelLayer, "brpop_timeout", RedisChannelLayer.brpop_timeout / SPEEDUP)
    waits = []
    original = RedisChannelLayer._brpop_with_clean

    async def counted(self, *args, **kwargs):
        waits.append(1)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(RedisChannelLayer, "_brpop_with_clean", counted)
    cookie = session_cookie(rita)
    hour_of_waits = HOUR // 5

    async def scenario():
        ws = WebsocketCommunicator(
            application, f"/ws/campaigns/{campaign.slug}/", headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())]
        )
        connected, _ = await ws.connect()
        assert connected
        while len(waits) < hour_of_waits:
            assert await ws.receive_nothing(timeout=0.5, interval=0.05), "the socket got output while nothing was sent"
        await get_channel_layer().group_send(campaign_group(campaign.pk), {"type": "campaign.event", "payload": {"event": "still-here"}})
        event = await ws.receive_json_from(timeout=5)  # raises the consumer's error had it died
        await ws.disconnect()
        return event

    assert async_to_sync(scenario)() == {"event": "still-here"}
    assert len(waits) >= hour_of_waits
