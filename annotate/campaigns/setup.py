"""Creating campaigns and changing their settings and status; the pages and the API call these."""
from __future__ import annotations

import re
from typing import TypeGuard

from django.db import transaction

from annotate.core.errors import DomainError
from annotate.labeling import assignment
from annotate.models import Campaign, Membership, Task

CRITERION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_CRITERIA = 8
SCALE = (0, 10)  # ratings are pressed as number keys, so a scale fits in 0..10
LOCKED_ONCE_TASKS_EXIST = ("task_type", "responses_per_task")


class InvalidSettings(DomainError):
    code = "invalid_settings"


def validate_criteria(criteria) -> list[dict]:
    """[{name, label, min, max}]: unique lowercase names, integer scales within 0..10 with min < max."""
    if not isinstance(criteria, list):
        raise InvalidSettings("criteria must be a list of {name, label, min, max}.", field="criteria")
    if len(criteria) > MAX_CRITERIA:
        raise InvalidSettings(f"at most {MAX_CRITERIA} criteria.", field="criteria")
    clean, names = [], set()
    for c in criteria:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not CRITERION_NAME.match(c["name"]):
            raise InvalidSettings("each criterion needs a name of lowercase letters, digits and _ (starting with a letter).", field="criteria")
        if c["name"] in names:
            raise InvalidSettings(f"criterion {c['name']!r} is named twice.", field="criteria")
        low, high = c.get("min"), c.get("max")
        if not (_is_int(low) and _is_int(high)) or not SCALE[0] <= low < high <= SCALE[1]:
            raise InvalidSettings(f"criterion {c['name']!r} needs integers min < max within {SCALE[0]}..{SCALE[1]}.", field="criteria")
        label = str(c.get("label") or c["name"])[:100]
        names.add(c["name"])
        clean.append({"name": c["name"], "label": label, "min": low, "max": high})
    return clean


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(fields: dict) -> None:
    """The rules the database constraints also hold, said in words."""
    if fields.get("task_type") == Campaign.TaskType.PAIRWISE and fields.get("responses_per_task", 2) != 2:
        raise InvalidSettings("a pairwise campaign has exactly 2 responses per task.", field="responses_per_task")
    if not 2 <= fields.get("responses_per_task", 2) <= 8:
        raise InvalidSettings("responses per task must be from 2 to 8.", field="responses_per_task")
    if not 0 <= fields.get("gold_rate", 0) <= 1:
        raise InvalidSettings("the gold rate is a share from 0 to 1.", field="gold_rate")
    if not 0 <= fields.get("gold_min_accuracy", 0) <= 1:
        raise InvalidSettings("the gold accuracy threshold is a share from 0 to 1.", field="gold_min_accuracy")
    if "criteria" in fields:
        fields["criteria"] = validate_criteria(fields["criteria"])


@transaction.atomic
def create_campaign(user, **fields) -> Campaign:
    """A new campaign with `user` as its admin."""
    check_settings(fields)
    campaign = Campaign.objects.create(created_by=user, **fields)
    Membership.objects.create(campaign=campaign, user=user, role=Membership.Role.ADMIN)
    return campaign


@transaction.atomic
def update_campaign(campaign: Campaign, **changes) -> Campaign:
    """Change settings. Task type and k are fixed once tasks exist; a new overlap applies to every
    non-gold task (a task's free slots grow or shrink by the difference, never below zero)."""
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    changed = {k: v for k, v in changes.items() if getattr(campaign, k) != v}
    locked = [k for k in LOCKED_ONCE_TASKS_EXIST if k in changed]
    if locked and Task.objects.filter(campaign=campaign).exists():
        raise InvalidSettings("the task type and responses per task cannot change once tasks exist.", field=locked[0])
    check_settings({**{k: getattr(campaign, k) for k in ("task_type", "responses_per_task")}, **changes})
    for name, value in changed.items():
        setattr(campaign, name, value)
    if changed:
        campaign.save(update_fields=list(changed))
    if "overlap" in changed:
        assignment.apply_overlap(campaign, campaign.overlap)
    return campaign


STATUS_ACTIONS = {"open": Campaign.Status.ACTIVE, "pause": Campaign.Status.PAUSED, "close": Campaign.Status.CLOSED}


def set_status(campaign: Campaign, action: str) -> Campaign:
    """open (labelers get tasks), pause (they get none until it reopens) or close."""
    if action not in STATUS_ACTIONS:
        raise InvalidSettings(f"action must be one of {sorted(STATUS_ACTIONS)}.", field="action")
    Campaign.objects.filter(pk=campaign.pk).update(status=STATUS_ACTIONS[action])
    campaign.status = STATUS_ACTIONS[action]
    return campaign
