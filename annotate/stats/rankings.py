"""A campaign's stored rankings as plain rows, for the statistics (agreement, Bradley–Terry, the dashboard).

Gold tasks are left out (their answer is known, they say nothing about the models or about how
labelers agree on open questions). Judgements of paused labelers are loaded and flagged, so each
statistic decides whether to count them. Four queries, whatever the campaign's size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from annotate.labeling.gold import paused_labeler_ids
from annotate.models import Campaign, Judgement, ModelVersion, TaskResponse


@dataclass(frozen=True, slots=True)
class Ranked:
    """One stored judgement: a labeler's ranking of a task's responses (groups of ids, best first)."""

    task_id: int
    labeler_id: int
    ranking: list[list[int]]
    ratings: dict
    paused: bool


@dataclass
class CampaignRankings:
    judgements: list[Ranked]
    model_of: dict[int, int] = field(default_factory=dict)
    """Response id -> model version id."""
    position_of: dict[int, int] = field(default_factory=dict)
    """Response id -> its display position in its task (left/right in a pairwise campaign)."""
    model_names: dict[int, str] = field(default_factory=dict)

    def counted(self, include_paused: bool = False) -> list[Ranked]:
        """The judgements a statistic counts: paused labelers' are left out unless asked for."""
        return self.judgements if include_paused else [j for j in self.judgements if not j.paused]


def campaign_rankings(campaign: Campaign, *, with_ratings: bool = False, paused: set[int] | None = None) -> CampaignRankings:
    """Every judgement of the campaign's non-gold tasks (surplus ones included), oldest first.

    `paused`: the paused labelers' ids when the caller already has them.
    """
    paused = paused_labeler_ids(campaign) if paused is None else paused
    judged = Judgement.objects.filter(task__campaign=campaign, task__is_gold=False)
    columns = ["task_id", "labeler_id", "ranking"] + (["ratings"] if with_ratings else [])
    judgements = [
        Ranked(row[0], row[1], row[2], row[3] if with_ratings else {}, row[1] in paused)
        for row in judged.order_by("id").values_list(*columns)
    ]
    if not judgements:
        return CampaignRankings([])
    slots = TaskResponse.objects.filter(task_id__in=judged.values("task_id")).values_list(
        "response_id", "position", "response__model_version_id"
    )
    model_of, position_of = {}, {}
    for response_id, position, model_id in slots:
        model_of[response_id] = model_id
        position_of[response_id] = position
    names = dict(ModelVersion.objects.filter(pk__in=set(model_of.values())).values_list("id", "name"))
    return CampaignRankings(judgements, model_of, position_of, names)
