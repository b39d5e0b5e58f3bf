"""Stored judgements as plain `training.preferences.RankedJudgement`s (the web half of the contract)."""
from __future__ import annotations

from training.preferences import RankedJudgement

from .models import Campaign, Judgement, Response
from .quality import paused_labeler_ids


def ranked_judgements(campaign: Campaign, *, since=None) -> list[RankedJudgement]:
    """Every judgement of the campaign's non-gold tasks; paused labelers' marked `excluded`."""
    paused = paused_labeler_ids(campaign)
    rows = Judgement.objects.filter(task__campaign=campaign, task__is_gold=False).order_by("id")
    if since is not None:
        rows = rows.filter(created_at__gt=since)
    rows = list(rows.values_list("task__prompt_id", "task__prompt__messages", "ranking", "labeler_id"))
    ids = {rid for *_, ranking, _ in rows for group in ranking for rid in group}
    texts = dict(Response.objects.filter(pk__in=ids).values_list("id", "text"))
    return [
        RankedJudgement(
            prompt_id=prompt_id,
            prompt_messages=messages,
            responses={rid: texts[rid] for group in ranking for rid in group},
            ranking=ranking,
            labeler_id=labeler_id,
            excluded=labeler_id in paused,
        )
        for prompt_id, messages, ranking, labeler_id in rows
    ]
