"""Websocket events, sent after commit from one place; `annotate.consumers` forwards them to browsers.

Events go through the channel layer: in memory by default, so only pages served by the same
daphne process hear them; with REDIS_URL set every process (gunicorn API workers, db_worker)
reaches every browser. A failed send is logged and never undoes or fails the write it reports.
"""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .consumers import campaign_group

log = logging.getLogger(__name__)


def judgement_stored(judgement) -> None:
    """Once the transaction commits, tell the campaign's live pages that a judgement arrived."""
    campaign_id = judgement.task.campaign_id
    payload = {"event": "judgement", "task": judgement.task_id}
    transaction.on_commit(lambda: send(campaign_id, payload))


def send(campaign_id: int, payload: dict) -> None:
    """Send `payload` to the members of the campaign's group now (call after commit)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(campaign_group(campaign_id), {"type": "campaign.event", "payload": payload})
    except Exception:  # the judgement is stored: a lost event only delays a dashboard refresh
        log.exception("could not send %s to campaign %s", payload.get("event"), campaign_id)
