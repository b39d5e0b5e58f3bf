"""Checking what a labeler (or an admin giving a gold answer) sends about a task: ranking, flags, ratings.

Every check is linear in the size of what was sent, and an error names the field and at most a
few of the offending values.
"""
from __future__ import annotations

from collections import Counter

from annotate.core import sql
from annotate.core.errors import InvalidRanking
from annotate.core.text_input import ascii_int
from annotate.models import Task

ALLOWED_FLAGS = frozenset({"all_bad", "unsafe", "needs_expert", "prompt_problem"})
MAX_RATIONALE = 10_000
# Caps on what a client may send (documented in the OpenAPI schema): a task has at most 8 responses,
# so anything longer is refused with a 400 before any further work.
MAX_RANKING_IDS = 64
MAX_FLAGS = 16
MAX_RATED_RESPONSES = 64
MAX_CRITERIA_PER_RESPONSE = 64
# The column is a PostgreSQL integer: anything larger used to wrap (false 409s) or fail (500).
MAX_TIME_SPENT_MS = 2**31 - 1


def validate_ranking(ranking, response_ids: list[int]) -> list[list[int]]:
    """A ranking as groups of ids, best first, covering each of the task's responses exactly once."""
    if not isinstance(ranking, list) or not ranking:
        raise InvalidRanking("ranking must be a non-empty list of groups of response ids.", field="ranking")
    seen: list[int] = []
    groups: list[list[int]] = []
    for group in ranking:
        if not isinstance(group, list) or not group:
            raise InvalidRanking("each group in ranking must be a non-empty list of response ids.", field="ranking")
        if len(seen) + len(group) > MAX_RANKING_IDS:
            raise InvalidRanking(f"ranking names more than {MAX_RANKING_IDS} response ids.", field="ranking")
        for rid in group:
            if isinstance(rid, bool) or not isinstance(rid, int):
                raise InvalidRanking(f"response id {str(rid)[:40]!r} is not an integer.", field="ranking")
        groups.append(list(group))
        seen.extend(group)
    expected = set(response_ids)
    unknown = [rid for rid in seen if rid not in expected]
    if unknown:
        raise InvalidRanking(f"ranking names responses that are not in this task: {_few(unknown)}.", field="ranking")
    repeated = sorted(rid for rid, count in Counter(seen).items() if count > 1)
    if repeated:
        raise InvalidRanking(f"ranking repeats responses: {_few(repeated)}.", field="ranking")
    missing = sorted(expected - set(seen))
    if missing:
        raise InvalidRanking(f"ranking misses responses: {missing}.", field="ranking")
    return groups


def validate_flags(flags) -> list[str]:
    if flags is None:
        return []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise InvalidRanking("flags must be a list of strings.", field="flags")
    if len(flags) > MAX_FLAGS:
        raise InvalidRanking(f"flags lists {len(flags)} items; at most {MAX_FLAGS} are allowed.", field="flags")
    unknown = sorted(set(flags) - ALLOWED_FLAGS)
    if unknown:
        raise InvalidRanking(f"unknown flags {[flag[:40] for flag in unknown]}; allowed: {sorted(ALLOWED_FLAGS)}.", field="flags")
    return sorted(set(flags))


def validate_ratings(ratings, criteria: list[dict], response_ids: list[int]) -> dict:
    """Per-response ratings on the campaign's criteria: {"<response id>": {"<criterion>": int}}; all optional."""
    if ratings in (None, {}):
        return {}
    if not criteria:
        raise InvalidRanking("this campaign asks for no ratings.", field="ratings")
    if not isinstance(ratings, dict):
        raise InvalidRanking("ratings must be an object keyed by response id.", field="ratings")
    if len(ratings) > MAX_RATED_RESPONSES:
        raise InvalidRanking(f"ratings name {len(ratings)} responses; at most {MAX_RATED_RESPONSES} are allowed.", field="ratings")
    by_name = {c["name"]: c for c in criteria}
    clean: dict[str, dict[str, int]] = {}
    for rid, values in ratings.items():
        if ascii_int(str(rid)) not in response_ids:
            raise InvalidRanking(f"ratings name response {str(rid)[:40]!r}, which is not in this task.", field="ratings")
        if not isinstance(values, dict) or len(values) > MAX_CRITERIA_PER_RESPONSE:
            raise InvalidRanking("each response's ratings must be an object of criterion: value.", field="ratings")
        for name, value in values.items():
            criterion = by_name.get(name)
            if criterion is None:
                raise InvalidRanking(f"unknown criterion {str(name)[:40]!r}; this campaign has {sorted(by_name)}.", field="ratings")
            if isinstance(value, bool) or not isinstance(value, int) or not criterion["min"] <= value <= criterion["max"]:
                raise InvalidRanking(f"{name} must be an integer from {criterion['min']} to {criterion['max']}.", field="ratings")
        clean[str(int(rid))] = dict(values)
    return clean


def validate_time_spent(time_spent_ms) -> int | None:
    if time_spent_ms is None:
        return None
    if isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int) or not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise InvalidRanking(f"time_spent_ms must be an integer from 0 to {MAX_TIME_SPENT_MS}.", field="time_spent_ms")
    return time_spent_ms


def task_response_ids(task: Task) -> list[int]:
    """The ids of the task's responses in display order."""
    return sql.task_response_ids(task.pk)


def _few(ids: list[int], shown: int = 10) -> str:
    """At most `shown` ids for an error message (a hostile body may hold millions)."""
    return str(ids[:shown])[:-1] + f", ... {len(ids) - shown} more]" if len(ids) > shown else str(ids)
