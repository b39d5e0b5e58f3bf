"""Who may start and cancel which kind of run: researchers train, admins also generate.

Researchers of a campaign may start and cancel the training and selection runs (reward, SFT, DPO,
PPO, RLOO, a round, optimize, drift, prioritise) and snapshots; generating responses changes the
labelers' queue, so it stays with the campaign's admins, as do settings, imports, gold and labelers.
"""
from __future__ import annotations

from annotate import access
from annotate.models import Membership

ADMIN = (Membership.Role.ADMIN,)
RESEARCH_KINDS = frozenset({"reward", "sft", "dpo", "ppo", "rloo", "round", "optimize", "drift", "prioritize", "snapshot"})


def roles_to_start(kind: str) -> tuple[str, ...]:
    """The campaign roles that may start (and cancel) a run of `kind`."""
    return access.READING_ROLES if kind in RESEARCH_KINDS else ADMIN


def may_start(role: str | None, kind: str) -> bool:
    return role in roles_to_start(kind)
