"""REST API v1: a campaign's round report (`annotate.runs.round_report`)."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from annotate import access
from annotate.runs.round_report import round_reports


@extend_schema(
    responses={200: {"type": "array", "items": {"type": "object"}}},
    description="One entry per policy a round made, oldest first: {round, policy, previous_policy, reward_model, "
    "reward_model_accuracy, evaluation: {prompts, reward_mean, previous_reward_mean, kl, mean_length, eos_share, rm_win_rate}, "
    "human_win_rate: {value, low, high, judgements}} (95% Wilson interval; null where not known yet). Campaign admins and researchers.",
)
@api_view(["GET"])
def campaign_rounds(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    return Response(round_reports(campaign))
