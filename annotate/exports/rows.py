"""Export rows: the selected judgements, read task by task, as rows of one of three shapes.

Shapes (one row is a dict; the same keys in every container):
- `pairs`: TRL's preference format, one row per (judgement, better, worse). Conversational by
  default (`prompt` is the chat, `chosen`/`rejected` are one assistant message each) or plain
  text (`text=True`). A k-way ranking gives every ordered pair across its groups; ties give none
  (`training.preferences.ranking_to_pairs`). Provenance columns ride along; TRL ignores them.
  There is no `margin` column: TRL's RewardTrainer would silently use one. A prompt's context
  passages are in its `prompt` (`training.preferences.chat_with_context`, the layout every model sees).
- In every shape, a prompt with context passages adds a `context` column ([{title, text}]) at the
  end of its rows; rows of prompts without passages are byte for byte what they were before.
- `rankings`: one row per judgement with its detail: pseudonymous labeler, time spent, flags,
  rationale, ratings, surplus flag, and every response with its model version and round.
- `tasks`: one row per task with at least one selected judgement: the aggregated ranking
  (mean rank, ties averaged; the same order as a Borda count), each response's mean rank, and
  the agreement (mean over pairs of judgements of the share of response pairs they order alike).

Memory stays constant: judgements come from a server-side cursor in task order, one task's
judgements at a time, beside two more cursors in the same order for the prompts and the responses.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain, groupby
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet

from annotate.campaigns.evaluation import evaluation_prompt_ids
from annotate.exports.agreement import aggregate_ranking, mean_ranks, pairwise_agreement
from annotate.exports.options import ExportFilters, ExportOptions
from annotate.labeling.gold import gold_accuracy, paused_labeler_ids
from annotate.models import Campaign, Judgement, Membership, ModelVersion, Task, TaskResponse
from training.preferences import chat_with_context, ranking_to_pairs

CHUNK = 2000
"""Rows fetched per round trip, on each of an export's cursors."""


# ---------------------------------------------------------------- selection


def select_tasks(campaign: Campaign, filters: ExportFilters) -> QuerySet[Task]:
    """The tasks the task-level filters keep: campaign, gold, model versions, rounds."""
    tasks = Task.objects.filter(campaign=campaign)
    if not filters.include_gold:
        tasks = tasks.filter(is_gold=False)
    if filters.models:
        tasks = tasks.filter(Exists(TaskResponse.objects.filter(task_id=OuterRef("pk"), response__model_version__name__in=filters.models)))
    if filters.round:
        tasks = tasks.filter(Exists(TaskResponse.objects.filter(task_id=OuterRef("pk"), response__model_version__round__in=filters.round)))
    if not filters.include_evaluation:
        tasks = tasks.exclude(prompt_id__in=evaluation_prompt_ids(campaign))
    return tasks


def select_judgements(campaign: Campaign, filters: ExportFilters) -> QuerySet[Judgement]:
    """The judgements the SQL-side filters keep, in task order (agreement is checked per task while streaming)."""
    qs = Judgement.objects.filter(task__in=select_tasks(campaign, filters))
    if not filters.include_surplus:
        qs = qs.filter(is_surplus=False)
    if not filters.include_paused and (paused := paused_labeler_ids(campaign)):
        qs = qs.exclude(labeler_id__in=paused)
    if filters.since:
        qs = qs.filter(created_at__gte=filters.since)
    if filters.until:
        qs = qs.filter(created_at__lt=filters.until)
    if filters.flagged == "exclude":
        qs = qs.filter(flags=[])
    elif filters.flagged == "only":
        qs = qs.exclude(flags=[])
    if filters.min_gold_accuracy is not None:
        qs = qs.filter(labeler_id__in=labelers_with_gold_accuracy(campaign, filters.min_gold_accuracy))
    return qs.order_by("task_id", "id")


def labelers_with_gold_accuracy(campaign: Campaign, at_least: float) -> list[int]:
    """Ids of labelers whose gold accuracy in the campaign is at least `at_least` (one query per gold labeler)."""
    gold_labelers = Judgement.objects.filter(task__campaign=campaign, task__is_gold=True).values_list("labeler_id", flat=True).distinct()
    return [uid for uid in gold_labelers if (accuracy := gold_accuracy(campaign, uid)[0]) is not None and accuracy >= at_least]


# ---------------------------------------------------------------- identities


def pseudonym(campaign_id: int, user_id: int) -> str:
    """A labeler's stable id in one campaign: HMAC-SHA256 keyed by SECRET_KEY, 16 hex digits."""
    message = f"arbiter-labeler:{campaign_id}:{user_id}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()[:16]


class LabelerNames:
    """user id -> the name an export shows: a pseudonym, or (identities=real) the username."""

    def __init__(self, campaign: Campaign, real: bool = False):
        self.campaign_id, self.real, self.cache = campaign.pk, real, {}
        if real:
            members = Membership.objects.filter(campaign=campaign).values_list("user_id", "user__username")
            self.cache = dict(members)

    def __call__(self, user_id: int) -> str:
        name = self.cache.get(user_id)
        if name is None:
            if self.real:
                name = get_user_model().objects.filter(pk=user_id).values_list("username", flat=True).first() or str(user_id)
            else:
                name = pseudonym(self.campaign_id, user_id)
            self.cache[user_id] = name
        return name


# ---------------------------------------------------------------- rows

JUDGEMENT_COLUMNS = ("id", "task_id", "labeler_id", "ranking", "rationale", "flags", "ratings", "time_spent_ms", "is_surplus", "created_at")
J_ID, J_TASK, J_LABELER, J_RANKING, J_RATIONALE, J_FLAGS, J_RATINGS, J_TIME, J_SURPLUS, J_CREATED = range(len(JUDGEMENT_COLUMNS))
PAIR_COLUMNS = JUDGEMENT_COLUMNS[: J_RANKING + 1]


@dataclass
class TaskInfo:
    """What the rows of one task need besides its judgements."""

    prompt_id: str
    messages: list[dict]
    is_gold: bool
    responses: list[dict]
    """[{id, model, round, text}] in display order."""
    by_id: dict[int, dict] = field(default_factory=dict)
    context: list[dict] = field(default_factory=list)
    """The prompt's passages ([{title, text}]; empty for most prompts)."""

    @property
    def chat(self) -> list[dict]:
        """The prompt as models see it: its passages in a system turn before the messages."""
        return chat_with_context(self.messages, self.context)

    def with_context(self, row: dict) -> dict:
        """The row, plus a `context` column when the prompt has passages."""
        if self.context:
            row["context"] = self.context
        return row


@dataclass
class ExportStats:
    """What an export wrote (a snapshot's row counts)."""

    judgements: int = 0
    tasks: int = 0
    rows: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"rows": self.rows, "judgements": self.judgements, "tasks": self.tasks}
        return out | self.splits


def build_rows(
    campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None, *, chunk: int = CHUNK
) -> Iterator[dict]:
    """The rows of the export, in task then judgement order, in constant memory (`chunk` rows per fetch)."""
    build = {"pairs": _pair_rows_text if options.text else _pair_rows, "rankings": _ranking_rows, "tasks": _task_rows}[options.shape]
    return _export(campaign, options, filters, stats, build, chunk)


def build_lines(
    campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None, *, chunk: int = CHUNK
) -> Iterator[str]:
    """The rows as compact JSON, one string each (no newline).

    Conversational pairs, the bulk of big exports, encode each task's prompt and texts once
    and fill them in (the same bytes as encoding the row: a test holds them equal); encoding
    every row whole took about 40% of an export's CPU time.
    """
    if options.shape == "pairs" and not options.text:
        return _export(campaign, options, filters, stats, _pair_lines, chunk)
    return map(encode_json, build_rows(campaign, options, filters, stats, chunk=chunk))


encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
encode_string = encode_basestring  # what encode_json does to a str, without its per-call setup


def _export(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None, build, chunk: int) -> Iterator:
    stats = stats if stats is not None else ExportStats()
    names = LabelerNames(campaign, real=options.identities == "real")
    columns = PAIR_COLUMNS if options.shape == "pairs" else JUDGEMENT_COLUMNS  # decode only the JSON a shape uses
    judgements = select_judgements(campaign, filters).values_list(*columns)
    # One transaction on PostgreSQL: the server-side cursors then stream instead of being
    # materialised whole (WITH HOLD). Not on SQLite, where BEGIN IMMEDIATE would lock out writers.
    with transaction.atomic() if connection.vendor == "postgresql" else nullcontext():
        for info, group in _groups_with_content(select_tasks(campaign, filters), judgements, filters.min_agreement, chunk):
            stats.tasks += 1
            stats.judgements += len(group)
            for row in build(info, group, names):
                stats.rows += 1
                yield row


def _groups_with_content(
    tasks: QuerySet, judgements: QuerySet, min_agreement: float | None, chunk: int = CHUNK
) -> Iterator[tuple[TaskInfo, list[tuple]]]:
    """(task content, its judgements) per task: three queries in task order, read side by side.

    Streams merged in Python rather than a query of texts per batch of judgements: on
    PostgreSQL such batch queries (IN lists, joins) get sequential scans, one per batch.
    """
    rows = judgements.iterator(chunk_size=chunk)
    first = next(rows, None)  # judgements first: the content queries, started after, then see every task they name
    if first is None:
        return
    prompts = TaskOrdered(tasks.order_by("id").values_list("id", "prompt__external_id", "prompt__messages", "is_gold", "prompt__context"), chunk)
    slots = TaskOrdered(
        TaskResponse.objects.filter(task__in=tasks).order_by("task_id", "position")
        .values_list("task_id", "response_id", "response__model_version_id", "response__text"),
        chunk,
    )
    models = ModelNames()
    for task_id, task_judgements in groupby(chain([first], rows), key=itemgetter(J_TASK)):
        group = list(task_judgements)
        if min_agreement is not None:
            agreement = pairwise_agreement([j[J_RANKING] for j in group])
            if agreement is None or agreement < min_agreement:
                continue
        [(_, prompt_id, messages, is_gold, context)] = prompts.take(task_id)
        info = TaskInfo(prompt_id, messages, is_gold, responses=[], context=context or [])
        for _, rid, model_id, text in slots.take(task_id):
            name, round_ = models[model_id]
            info.by_id[rid] = response = {"id": rid, "model": name, "round": round_, "text": text}
            info.responses.append(response)
        yield info, group


class TaskOrdered:
    """The rows of a query ordered by task id (the first column), taken task by task in increasing order."""

    def __init__(self, rows: QuerySet, chunk: int = CHUNK):
        self.rows = rows.iterator(chunk_size=chunk)
        self.head = next(self.rows, None)

    def take(self, task_id: int) -> list[tuple]:
        while self.head is not None and self.head[0] < task_id:
            self.head = next(self.rows, None)
        taken = []
        while self.head is not None and self.head[0] == task_id:
            taken.append(self.head)
            self.head = next(self.rows, None)
        return taken


class ModelNames(dict):
    """model version id -> (name, round), read once per version."""

    def __missing__(self, model_id: int) -> tuple[str, int | None]:
        self[model_id] = ModelVersion.objects.values_list("name", "round").get(pk=model_id)
        return self[model_id]


def _pair_rows(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    for j in group:
        labeler = names(j[J_LABELER])
        for better, worse in ranking_to_pairs(j[J_RANKING]):
            chosen, rejected = info.by_id[better], info.by_id[worse]
            yield info.with_context({
                "prompt": info.chat,
                "chosen": [{"role": "assistant", "content": chosen["text"]}],
                "rejected": [{"role": "assistant", "content": rejected["text"]}],
                "prompt_id": info.prompt_id,
                "chosen_id": better,
                "rejected_id": worse,
                "chosen_model": chosen["model"],
                "rejected_model": rejected["model"],
                "task_id": j[J_TASK],
                "judgement_id": j[J_ID],
                "labeler": labeler,
            })


def _pair_lines(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[str]:
    """`encode_json` of each `_pair_rows` row, from JSON encoded once per task."""
    prompt, prompt_id = encode_json(info.chat), encode_string(info.prompt_id)
    context = f',"context":{encode_json(info.context)}' if info.context else ""
    said = {rid: f'[{{"role":"assistant","content":{encode_string(r["text"])}}}]' for rid, r in info.by_id.items()}
    model = {rid: encode_string(r["model"]) for rid, r in info.by_id.items()}
    for j in group:
        tail = f',"task_id":{j[J_TASK]},"judgement_id":{j[J_ID]},"labeler":{encode_string(names(j[J_LABELER]))}{context}}}'
        for better, worse in ranking_to_pairs(j[J_RANKING]):
            yield (
                f'{{"prompt":{prompt},"chosen":{said[better]},"rejected":{said[worse]},"prompt_id":{prompt_id},'
                f'"chosen_id":{better},"rejected_id":{worse},"chosen_model":{model[better]},"rejected_model":{model[worse]}{tail}'
            )


def _pair_rows_text(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    prompt = prompt_text(info.chat)
    for row in _pair_rows(info, group, names):
        yield row | {"prompt": prompt, "chosen": row["chosen"][0]["content"], "rejected": row["rejected"][0]["content"]}


def prompt_text(messages: list[dict]) -> str:
    """A chat as one string: a lone user turn is its content; otherwise "role: content" blocks."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _ranking_rows(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    for j in group:
        yield info.with_context({
            "judgement_id": j[J_ID],
            "task_id": j[J_TASK],
            "prompt_id": info.prompt_id,
            "prompt": info.messages,
            "responses": info.responses,
            "ranking": j[J_RANKING],
            "labeler": names(j[J_LABELER]),
            "time_spent_ms": j[J_TIME],
            "flags": j[J_FLAGS],
            "rationale": j[J_RATIONALE],
            "ratings": [
                {"response_id": int(rid), "criterion": name, "value": value}
                for rid, values in sorted(j[J_RATINGS].items(), key=lambda item: int(item[0]))
                for name, value in sorted(values.items())
            ],
            "is_surplus": j[J_SURPLUS],
            "is_gold": info.is_gold,
            "created_at": j[J_CREATED].isoformat(),
        })


def _task_rows(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    rankings = [j[J_RANKING] for j in group]
    means = mean_ranks(rankings)
    yield info.with_context({
        "task_id": group[0][J_TASK],
        "prompt_id": info.prompt_id,
        "prompt": info.messages,
        "responses": info.responses,
        "ranking": aggregate_ranking(means),
        "mean_ranks": [{"response_id": rid, "mean_rank": means[rid]} for rid in sorted(means)],
        "judgements": len(group),
        "agreement": pairwise_agreement(rankings),
        "labelers": [names(j[J_LABELER]) for j in group],
        "flags": sorted({flag for j in group for flag in j[J_FLAGS]}),
        "is_gold": info.is_gold,
    })
