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
    """Two queries whatever the campaign's size: the prompt, then the responses in order."""
    prompt = Prompt.objects.only("messages", "context").get(pk=task.prompt_id)
    rows = TaskResponse.objects.filter(task=task).order_by("position").values_list("response_id", "response__text")
    responses = [ShownResponse(id=rid, text=text, letter=chr(ord("A") + i)) for i, (rid, text) in enumerate(rows)]
    return TaskContent(task=task, prompt=prompt, responses=responses)
