"""What a labeler is shown for a task: the prompt, its context, the responses in display order.

Never the model names (labeling is blind) and never anyone else's judgement.
"""
from __future__ import annotations

from dataclasses import dataclass

from annotate.core import sql
from annotate.models import Prompt, Task


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
    found = sql.task_content(task.pk)  # hand-written: this runs for every task shown
    _, _, prompt_id, messages, context = found[0]
    prompt = Prompt(pk=prompt_id, messages=sql.field_value(Prompt, "messages", messages), context=sql.field_value(Prompt, "context", context))
    responses = [ShownResponse(id=rid, text=text, letter=chr(ord("A") + i)) for i, (rid, text, *_) in enumerate(found)]
    return TaskContent(task=task, prompt=prompt, responses=responses)
