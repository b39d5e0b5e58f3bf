"""What a labeler is shown for a task: the prompt, its context, the responses in display order.

Never the model names (labeling is blind) and never anyone else's judgement.
"""
from __future__ import annotations

from dataclasses import dataclass

from .models import Prompt, Task, TaskResponse


@dataclass
class ShownResponse:
    id: int
    text: str
    letter: str


@dataclass
class TaskContent:
    task: Task
    prompt: Prompt
    responses: list[ShownResponse]


def task_content(task: Task) -> TaskContent:
    """One query whatever the campaign's size: the responses in order, each row carrying the prompt."""
    rows = list(
        TaskResponse.objects.filter(task=task)
        .order_by("position")
        .values_list("response_id", "response__text", "task__prompt_id", "task__prompt__messages", "task__prompt__context")
    )
    _, _, prompt_id, messages, context = rows[0]
    responses = [ShownResponse(id=rid, text=text, letter=chr(ord("A") + i)) for i, (rid, text, *_) in enumerate(rows)]
    return TaskContent(task=task, prompt=Prompt(pk=prompt_id, messages=messages, context=context), responses=responses)
