"""Websocket consumers: they only check access, join groups and forward events."""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotate import access
from annotate.realtime.events import campaign_group


class CampaignConsumer(AsyncJsonWebsocketConsumer):
    """Live events of one campaign (judgements, progress, runs) for its admins and researchers (labelers are refused)."""

    async def connect(self):
        campaign_id = await self._campaign_id_if_member()
        if campaign_id is None:
            await self.close(code=4404)
            return
        self.group = campaign_group(campaign_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def campaign_event(self, event):
        await self.send_json(event["payload"])

    @database_sync_to_async
    def _campaign_id_if_member(self) -> int | None:
        user = self.scope.get("user")
        if user is None:
            return None
        return access.may_receive_live_events(user, self.scope["url_route"]["kwargs"]["slug"])
