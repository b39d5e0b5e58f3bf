"""Turning responses into ranking tasks.

How k-subsets are chosen: each response goes into at most one task of its campaign.
A prompt's responses that are in no task yet are interleaved across model versions
(one from each model in turn, oldest first) and cut into groups of k, so a task
compares different models wherever the prompt has them. Fewer than k left over wait
for more responses. The display order inside each task is shuffled.
"""
from __future__ import annotations

import random
from collections import defaultdict
from itertools import zip_longest
from typing import Protocol, TypeVar

from django.db import transaction

from annotate.models import Campaign, Response, Task, TaskResponse

shuffle = random.SystemRandom().shuffle


class _Candidate(Protocol):
    """What tasks are cut from: a response, or a row written by an import (pk and model_version_id)."""

    @property
    def pk(self) -> int: ...

    @property
    def model_version_id(self) -> int: ...


R = TypeVar("R", bound=_Candidate)


def interleave_by_model(responses: list[R]) -> list[R]:
    """One response from each model version in turn, each model's oldest first."""
    by_model: dict[int, list[R]] = defaultdict(list)
    for response in sorted(responses, key=lambda r: (r.model_version_id, r.pk)):
        by_model[response.model_version_id].append(response)
    rounds = zip_longest(*by_model.values())
    return [r for round_ in rounds for r in round_ if r is not None]


def task_groups(responses: list[R], k: int, *, shuffle=shuffle) -> list[list[R]]:
    """One prompt's unused responses (anything with pk and model_version_id) cut into tasks of k,
    interleaved across models, each in a shuffled display order; fewer than k left over wait."""
    if len(responses) == k:  # one task of them all, shuffled: the interleaving would not change it (a pair import's case)
        members = list(responses)
        shuffle(members)
        return [members]
    ordered = interleave_by_model(responses)
    groups = [ordered[start : start + k] for start in range(0, len(ordered) - k + 1, k)]
    for members in groups:
        shuffle(members)
    return groups


def build_tasks(campaign: Campaign, prompt_ids, *, priority: int = 0) -> int:
    """Create tasks from the prompts' unused responses; returns how many tasks were made."""
    k = campaign.responses_per_task
    prompt_ids = list(prompt_ids)
    # A subquery on the slots, not a join through Task: SQLite plans the join badly without statistics.
    used = TaskResponse.objects.filter(task__campaign=campaign, response__prompt_id__in=prompt_ids).values("response_id")
    unused = (
        Response.objects.filter(prompt_id__in=prompt_ids, prompt__campaign=campaign)
        .exclude(pk__in=used)
        .only("id", "prompt_id", "model_version_id")
    )
    by_prompt: dict[int, list[Response]] = defaultdict(list)
    for response in unused:
        by_prompt[response.prompt_id].append(response)
    groups = [(prompt_id, members) for prompt_id, responses in sorted(by_prompt.items()) for members in task_groups(responses, k)]
    if not groups:
        return 0
    with transaction.atomic():
        tasks = Task.objects.bulk_create(
            Task(
                campaign=campaign,
                prompt_id=prompt_id,
                priority=priority,
                judgements_needed=campaign.overlap,
                remaining=campaign.overlap,
            )
            for prompt_id, _ in groups
        )
        slots: list[TaskResponse] = []
        for task, (_, members) in zip(tasks, groups):
            slots.extend(TaskResponse(task=task, response=r, position=i) for i, r in enumerate(members))
        TaskResponse.objects.bulk_create(slots, batch_size=5000)
    return len(tasks)
