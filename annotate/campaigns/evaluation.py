"""A campaign's evaluation split: fixed prompts that every policy is evaluated on and nothing trains on.

Derived, not stored: a prompt is in the split when the sha256 of its external id falls in the
lowest EVALUATION_FRACTION of the hash range, and the EVALUATION_MINIMUM prompts with the
smallest hashes always are; never more than half the campaign's prompts. The same prompts
therefore stay in the split as prompts are added (the minimum aside, on campaigns too small to
reach it by the fraction). Settings: RLHF_EVALUATION_FRACTION (0.1), RLHF_EVALUATION_MINIMUM (16).
"""
from __future__ import annotations

import hashlib

from django.conf import settings

from annotate.models import Campaign

HASH_RANGE = 16**64


def _position(external_id: str) -> int:
    return int(hashlib.sha256(f"arbiter-evaluation\x00{external_id}".encode()).hexdigest(), 16)


def evaluation_prompt_ids(campaign: Campaign) -> set[int]:
    """Database ids of the campaign's evaluation prompts."""
    fraction = float(getattr(settings, "RLHF_EVALUATION_FRACTION", 0.1))
    minimum = int(getattr(settings, "RLHF_EVALUATION_MINIMUM", 16))
    ranked = sorted(((_position(eid), pid) for pid, eid in campaign.prompts.values_list("id", "external_id")))
    cap = len(ranked) // 2
    by_fraction = sum(1 for position, _ in ranked if position < fraction * HASH_RANGE)
    return {pid for _, pid in ranked[: min(cap, max(minimum, by_fraction))]}
