"""Websocket events, sent after commit from one place; `annotate.realtime.consumers` forwards them to browsers.

`{"event": "judgement", "task": <the latest task judged>, "count": <judgements since the last event>}`:
through Redis at most one every half second per campaign and process (the last judgement of a
burst is never dropped); in memory, one per judgement.

Events go through the channel layer: in memory by default, so only pages served by the same
daphne process hear them; with REDIS_URL set every process (API workers, db_worker)
reaches every browser. A failed send is logged and never undoes or fails the write it reports.
"""
from __future__ import annotations

import logging
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def campaign_group(campaign_id: int) -> str:
    """The channel-layer group of one campaign's live events."""
    return f"campaign-{campaign_id}"


# Through Redis, judgement events are coalesced per campaign and process, carrying how many
# arrived: at hundreds of judgements a second, one send each (two milliseconds of CPU through
# Redis) would cost more than storing the judgement.
COALESCE_SECONDS = 0.5
_pending: dict[int, dict] = {}
_pending_lock = threading.Lock()


def judgement_stored(judgement) -> None:
    """Once the transaction commits, tell the campaign's live pages that a judgement arrived."""
    campaign_id = judgement.task.campaign_id
    task_id = judgement.task_id
    transaction.on_commit(lambda: _send_soon(campaign_id, task_id))


def _send_soon(campaign_id: int, task_id: int) -> None:
    if isinstance(get_channel_layer(), InMemoryChannelLayer):
        # The in-memory layer (the demo, no Redis) only reaches this process's sockets and must be
        # called from the request's thread to reach their event loop: send now, uncoalesced.
        send(campaign_id, {"event": "judgement", "task": task_id, "count": 1})
        return
    with _pending_lock:
        waiting = _pending.get(campaign_id)
        if waiting is not None:
            waiting["task"] = task_id
            waiting["count"] += 1
            return
        _pending[campaign_id] = {"event": "judgement", "task": task_id, "count": 1}
    timer = threading.Timer(COALESCE_SECONDS, _flush, [campaign_id])
    timer.daemon = True
    timer.start()


def _flush(campaign_id: int) -> None:
    with _pending_lock:
        payload = _pending.pop(campaign_id)
    send(campaign_id, payload)


def send(campaign_id: int, payload: dict) -> None:
    """Send `payload` to the members of the campaign's group now (call after commit)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(campaign_group(campaign_id), {"type": "campaign.event", "payload": payload})
    except Exception:  # the judgement is stored: a lost event only delays a dashboard refresh
        log.exception("could not send %s to campaign %s", payload.get("event"), campaign_id)
