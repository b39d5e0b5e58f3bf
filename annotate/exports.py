"""Preference exports: stored judgements -> rows in one of three shapes -> a file, streamed.

Shapes (one row is a dict; the same keys in every container):
- `pairs`: TRL's preference format, one row per (judgement, better, worse). Conversational by
  default (`prompt` is the chat, `chosen`/`rejected` are one assistant message each) or plain
  text (`text=True`). A k-way ranking gives every ordered pair across its groups; ties give none
  (`training.preferences.ranking_to_pairs`). Provenance columns ride along; TRL ignores them.
  There is no `margin` column: TRL's RewardTrainer would silently use one.
- `rankings`: one row per judgement with its detail: pseudonymous labeler, time spent, flags,
  rationale, ratings, surplus flag, and every response with its model version and round.
- `tasks`: one row per task with at least one selected judgement: the aggregated ranking
  (mean rank, ties averaged; the same order as a Borda count), each response's mean rank, and
  the agreement (mean over pairs of judgements of the share of response pairs they order alike).

Containers: `jsonl`, `jsonl.gz`, `parquet` (row groups of ROW_GROUP rows) stream as bytes;
`hf` is a `datasets.DatasetDict` (train/test split by prompt with `split_prompts`) saved to a
folder, zipped for download. Memory stays constant: judgements come from a server-side cursor
in task order, one task's judgements at a time, beside two more cursors in the same order for
the prompts and the responses.

Filters (`ExportFilters`): date range, model versions, round, labeler gold accuracy, task
agreement, flagged in/out/only; paused labelers and gold tasks are left out unless asked for,
surplus judgements are kept unless asked not to. `parse_export` turns query parameters (or a
snapshot's stored filters) into options and filters, or raises `InvalidExport` (400) naming
the allowed values.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, time
from itertools import chain, combinations, groupby
from json.encoder import encode_basestring
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from training.preferences import ranking_to_pairs, split_prompts

from .errors import DomainError
from .models import Campaign, Judgement, Membership, ModelVersion, Task, TaskResponse
from .quality import gold_accuracy, paused_labeler_ids, rank_of

SHAPES = ("pairs", "rankings", "tasks")
FORMATS = ("jsonl", "jsonl.gz", "parquet", "hf")
EXTENSIONS = {"jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz", "parquet": ".parquet", "hf": ".zip"}
CONTENT_TYPES = {
    "jsonl": "application/jsonl",
    "jsonl.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
    "hf": "application/zip",
}
FLAGGED = ("include", "exclude", "only")
IDENTITIES = ("pseudonymous", "real")
CHUNK = 2000
"""Rows fetched per round trip, on each of an export's cursors."""
ROW_GROUP = 10_000
"""Rows per Parquet row group / Arrow record batch: bounds the rows held at once."""
FLUSH_BYTES = 256 * 1024
"""JSONL bytes gathered before a chunk is handed to the response or the file."""


class InvalidExport(DomainError):
    """A bad export request; the body lists the allowed values."""

    code = "invalid_export"

    def __init__(self, message: str, *, field: str, allowed: Iterable[str] = ()):
        super().__init__(message, field=field)
        self.allowed = list(allowed)

    def as_dict(self) -> dict:
        body = super().as_dict()
        if self.allowed:
            body["allowed"] = self.allowed
        return body


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ExportFilters:
    """Which judgements an export takes. Every field has a safe default."""

    since: datetime | None = None
    """Judgements created at or after this moment."""
    until: datetime | None = None
    """Judgements created before this moment (exclusive)."""
    models: tuple[str, ...] = ()
    """Tasks with at least one response from one of these model versions (names)."""
    round: tuple[int, ...] = ()
    """Tasks with at least one response from a model version of one of these RLHF rounds."""
    min_gold_accuracy: float | None = None
    """Labelers whose gold accuracy is at least this (labelers without gold answers are left out)."""
    min_agreement: float | None = None
    """Tasks whose selected judgements agree at least this much (tasks judged once are left out)."""
    flagged: str = "include"
    """include: all judgements; exclude: only unflagged ones; only: only flagged ones."""
    include_paused: bool = False
    """Keep judgements of labelers paused in this campaign."""
    include_gold: bool = False
    """Keep judgements of gold tasks."""
    include_surplus: bool = True
    """Keep surplus judgements (submitted after the task was fully served)."""

    def as_dict(self) -> dict[str, Any]:
        """The non-default values, JSON-ready; `parse_filters` reads it back."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value.isoformat() if isinstance(value, datetime) else list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class ExportOptions:
    """What an export looks like."""

    shape: str = "pairs"
    """pairs, rankings or tasks."""
    format: str = "jsonl"
    """jsonl, jsonl.gz, parquet or hf."""
    text: bool = False
    """Pairs as plain text instead of chat messages."""
    identities: str = "pseudonymous"
    """pseudonymous: a stable salted hash per campaign; real: usernames (campaign admins only)."""
    test_fraction: float = 0.1
    """hf: share of prompts held out in the test split."""
    seed: int = 0
    """hf: seed of the prompt split."""

    def extras(self) -> dict[str, Any]:
        """Non-default options other than shape and format (stored beside a snapshot's filters)."""
        defaults = ExportOptions()
        return {k: v for k, v in asdict(self).items() if k not in ("shape", "format") and v != getattr(defaults, k)}


FILTER_NAMES = tuple(f.name for f in fields(ExportFilters))
OPTION_NAMES = tuple(f.name for f in fields(ExportOptions))


def parse_export(params: Mapping[str, Any]) -> tuple[ExportOptions, ExportFilters]:
    """Options and filters from query parameters or JSON; InvalidExport names what is wrong and what is allowed."""
    unknown = sorted(set(params) - set(OPTION_NAMES) - set(FILTER_NAMES))
    if unknown:
        allowed = list(OPTION_NAMES + FILTER_NAMES)
        raise InvalidExport(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed)}.", field=unknown[0], allowed=allowed)
    options = parse_options({k: v for k, v in params.items() if k in OPTION_NAMES})
    return options, parse_filters({k: v for k, v in params.items() if k in FILTER_NAMES})


def parse_options(params: Mapping[str, Any]) -> ExportOptions:
    options = ExportOptions(
        shape=_choice(params, "shape", SHAPES, "pairs"),
        format=_choice(params, "format", FORMATS, "jsonl"),
        text=_bool(params, "text", False),
        identities=_choice(params, "identities", IDENTITIES, "pseudonymous"),
        test_fraction=_number(params, "test_fraction", 0.1, low=0.0, high=1.0, open_ends=True),
        seed=int(_number(params, "seed", 0, low=0, high=2**31 - 1, integer=True)),
    )
    if options.text and options.shape != "pairs":
        raise InvalidExport("text applies to the pairs shape only.", field="text", allowed=["pairs"])
    return options


def parse_filters(params: Mapping[str, Any]) -> ExportFilters:
    unknown = sorted(set(params) - set(FILTER_NAMES))
    if unknown:
        raise InvalidExport(f"unknown filter {unknown[0]!r}; allowed: {', '.join(FILTER_NAMES)}.", field=unknown[0], allowed=FILTER_NAMES)
    return ExportFilters(
        since=_moment(params, "since"),
        until=_moment(params, "until"),
        models=tuple(_list(params, "models")),
        round=tuple(sorted({_round(value) for value in _list(params, "round")})),
        min_gold_accuracy=_number(params, "min_gold_accuracy", None, low=0.0, high=1.0),
        min_agreement=_number(params, "min_agreement", None, low=0.0, high=1.0),
        flagged=_choice(params, "flagged", FLAGGED, "include"),
        include_paused=_bool(params, "include_paused", False),
        include_gold=_bool(params, "include_gold", False),
        include_surplus=_bool(params, "include_surplus", True),
    )


def _choice(params, key, allowed, default):
    value = params.get(key, default)
    if value not in allowed:
        raise InvalidExport(f"{key} must be one of {', '.join(allowed)}; got {value!r}.", field=key, allowed=allowed)
    return value


def _bool(params, key, default: bool) -> bool:
    value = params.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidExport(f"{key} must be true or false; got {value!r}.", field=key, allowed=["true", "false"])


def _number(params, key, default, *, low, high, open_ends=False, integer=False):
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        number = None
    inside = number is not None and (low < number < high if open_ends else low <= number <= high)
    if isinstance(value, bool) or not inside:
        kind = "an integer" if integer else "a number"
        bounds = f"strictly between {low} and {high}" if open_ends else f"from {low} to {high}"
        raise InvalidExport(f"{key} must be {kind} {bounds}; got {value!r}.", field=key)
    return number


def _list(params, key) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in items):
        raise InvalidExport(f"{key} must be a comma-separated list (or a JSON list); got {value!r}.", field=key)
    return [str(item).strip() for item in items if str(item).strip()]


def _round(value: str) -> int:
    if not value.isdigit():
        raise InvalidExport(f"round must be non-negative integers; got {value!r}.", field="round")
    return int(value)


def _moment(params, key) -> datetime | None:
    """An ISO date (its midnight, UTC) or datetime (naive ones are UTC)."""
    value = params.get(key)
    if value is None or value == "":
        return None
    parsed = None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value) or (datetime.combine(d, time()) if (d := parse_date(value)) else None)
        except ValueError:
            parsed = None
    if parsed is None:
        raise InvalidExport(f"{key} must be an ISO date or datetime (2025-01-31 or 2025-01-31T12:00:00Z); got {value!r}.", field=key)
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


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


def pairwise_agreement(rankings: list[list[list[int]]]) -> float | None:
    """Mean over pairs of judgements of the share of response pairs both order alike (a tie matches only a tie).

    None when fewer than two judgements (or fewer than two responses) make it undefined.
    """
    ranks = [rank_of(ranking) for ranking in rankings]
    items = sorted(ranks[0]) if ranks else []
    response_pairs = list(combinations(items, 2))
    if len(ranks) < 2 or not response_pairs:
        return None
    scores = [
        sum(_order(x, a, b) == _order(y, a, b) for a, b in response_pairs) / len(response_pairs)
        for x, y in combinations(ranks, 2)
    ]
    return sum(scores) / len(scores)


def _order(rank: dict[int, int], a: int, b: int) -> int:
    """-1 if a is ranked above b, 1 if below, 0 if tied."""
    return (rank[a] > rank[b]) - (rank[a] < rank[b])


def mean_ranks(rankings: list[list[list[int]]]) -> dict[int, float]:
    """Each response's mean 1-based rank; tied responses share the average of the places they span."""
    totals: dict[int, float] = {}
    for ranking in rankings:
        place = 1
        for group in ranking:
            shared = place + (len(group) - 1) / 2
            for rid in group:
                totals[rid] = totals.get(rid, 0.0) + shared
            place += len(group)
    return {rid: total / len(rankings) for rid, total in totals.items()}


def aggregate_ranking(means: dict[int, float]) -> list[list[int]]:
    """Groups of response ids by mean rank, best first; equal means are tied."""
    ordered = sorted(means, key=lambda rid: (round(means[rid], 9), rid))
    return [list(group) for _, group in groupby(ordered, key=lambda rid: round(means[rid], 9))]


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


def export_rows(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None) -> Iterator[dict]:
    """The rows of the export, in task then judgement order, in constant memory."""
    build = {"pairs": _pair_rows_text if options.text else _pair_rows, "rankings": _ranking_rows, "tasks": _task_rows}[options.shape]
    return _export(campaign, options, filters, stats, build)


def export_lines(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None) -> Iterator[str]:
    """The rows as compact JSON, one string each (no newline).

    Conversational pairs, the bulk of big exports, encode each task's prompt and texts once
    and fill them in (the same bytes as encoding the row: a test holds them equal); encoding
    every row whole took about 40% of an export's CPU time.
    """
    if options.shape == "pairs" and not options.text:
        return _export(campaign, options, filters, stats, _pair_lines)
    return map(encode_json, export_rows(campaign, options, filters, stats))


encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
encode_string = encode_basestring  # what encode_json does to a str, without its per-call setup


def _export(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None, build) -> Iterator:
    stats = stats if stats is not None else ExportStats()
    names = LabelerNames(campaign, real=options.identities == "real")
    columns = PAIR_COLUMNS if options.shape == "pairs" else JUDGEMENT_COLUMNS  # decode only the JSON a shape uses
    judgements = select_judgements(campaign, filters).values_list(*columns)
    # One transaction on PostgreSQL: the server-side cursors then stream instead of being
    # materialised whole (WITH HOLD). Not on SQLite, where BEGIN IMMEDIATE would lock out writers.
    with transaction.atomic() if connection.vendor == "postgresql" else nullcontext():
        for info, group in _groups_with_content(select_tasks(campaign, filters), judgements, filters.min_agreement):
            stats.tasks += 1
            stats.judgements += len(group)
            for row in build(info, group, names):
                stats.rows += 1
                yield row


def _groups_with_content(tasks: QuerySet, judgements: QuerySet, min_agreement: float | None) -> Iterator[tuple[TaskInfo, list[tuple]]]:
    """(task content, its judgements) per task: three queries in task order, read side by side.

    Streams merged in Python rather than a query of texts per batch of judgements: on
    PostgreSQL such batch queries (IN lists, joins) get sequential scans, one per batch.
    """
    rows = judgements.iterator(chunk_size=CHUNK)
    first = next(rows, None)  # judgements first: the content queries, started after, then see every task they name
    if first is None:
        return
    prompts = TaskOrdered(tasks.order_by("id").values_list("id", "prompt__external_id", "prompt__messages", "is_gold"))
    slots = TaskOrdered(
        TaskResponse.objects.filter(task__in=tasks).order_by("task_id", "position")
        .values_list("task_id", "response_id", "response__model_version_id", "response__text")
    )
    models = ModelNames()
    for task_id, group in groupby(chain([first], rows), key=itemgetter(J_TASK)):
        group = list(group)
        if min_agreement is not None:
            agreement = pairwise_agreement([j[J_RANKING] for j in group])
            if agreement is None or agreement < min_agreement:
                continue
        [(_, prompt_id, messages, is_gold)] = prompts.take(task_id)
        info = TaskInfo(prompt_id, messages, is_gold, responses=[])
        for _, rid, model_id, text in slots.take(task_id):
            name, round_ = models[model_id]
            info.by_id[rid] = response = {"id": rid, "model": name, "round": round_, "text": text}
            info.responses.append(response)
        yield info, group


class TaskOrdered:
    """The rows of a query ordered by task id (the first column), taken task by task in increasing order."""

    def __init__(self, rows: QuerySet):
        self.rows = rows.iterator(chunk_size=CHUNK)
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
            yield {
                "prompt": info.messages,
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
            }


def _pair_lines(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[str]:
    """`encode_json` of each `_pair_rows` row, from JSON encoded once per task."""
    prompt, prompt_id = encode_json(info.messages), encode_string(info.prompt_id)
    said = {rid: f'[{{"role":"assistant","content":{encode_string(r["text"])}}}]' for rid, r in info.by_id.items()}
    model = {rid: encode_string(r["model"]) for rid, r in info.by_id.items()}
    for j in group:
        tail = f',"task_id":{j[J_TASK]},"judgement_id":{j[J_ID]},"labeler":{encode_string(names(j[J_LABELER]))}}}'
        for better, worse in ranking_to_pairs(j[J_RANKING]):
            yield (
                f'{{"prompt":{prompt},"chosen":{said[better]},"rejected":{said[worse]},"prompt_id":{prompt_id},'
                f'"chosen_id":{better},"rejected_id":{worse},"chosen_model":{model[better]},"rejected_model":{model[worse]}{tail}'
            )


def _pair_rows_text(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    prompt = prompt_text(info.messages)
    for row in _pair_rows(info, group, names):
        yield row | {"prompt": prompt, "chosen": row["chosen"][0]["content"], "rejected": row["rejected"][0]["content"]}


def prompt_text(messages: list[dict]) -> str:
    """A chat as one string: a lone user turn is its content; otherwise "role: content" blocks."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _ranking_rows(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    for j in group:
        yield {
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
        }


def _task_rows(info: TaskInfo, group: list[tuple], names: LabelerNames) -> Iterator[dict]:
    rankings = [j[J_RANKING] for j in group]
    means = mean_ranks(rankings)
    yield {
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
    }


# ---------------------------------------------------------------- Arrow schemas (Parquet, hf)

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
RESPONSES = pa.list_(pa.struct([("id", pa.int64()), ("model", pa.string()), ("round", pa.int64()), ("text", pa.string())]))
RANKING = pa.list_(pa.list_(pa.int64()))
_PROVENANCE = [
    ("prompt_id", pa.string()), ("chosen_id", pa.int64()), ("rejected_id", pa.int64()), ("chosen_model", pa.string()),
    ("rejected_model", pa.string()), ("task_id", pa.int64()), ("judgement_id", pa.int64()), ("labeler", pa.string()),
]
SCHEMAS = {
    "pairs": pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), *_PROVENANCE]),
    "pairs-text": pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()), *_PROVENANCE]),
    "rankings": pa.schema([
        ("judgement_id", pa.int64()), ("task_id", pa.int64()), ("prompt_id", pa.string()), ("prompt", MESSAGES),
        ("responses", RESPONSES), ("ranking", RANKING), ("labeler", pa.string()), ("time_spent_ms", pa.int64()),
        ("flags", pa.list_(pa.string())), ("rationale", pa.string()),
        ("ratings", pa.list_(pa.struct([("response_id", pa.int64()), ("criterion", pa.string()), ("value", pa.int64())]))),
        ("is_surplus", pa.bool_()), ("is_gold", pa.bool_()), ("created_at", pa.string()),
    ]),
    "tasks": pa.schema([
        ("task_id", pa.int64()), ("prompt_id", pa.string()), ("prompt", MESSAGES), ("responses", RESPONSES),
        ("ranking", RANKING), ("mean_ranks", pa.list_(pa.struct([("response_id", pa.int64()), ("mean_rank", pa.float64())]))),
        ("judgements", pa.int64()), ("agreement", pa.float64()), ("labelers", pa.list_(pa.string())),
        ("flags", pa.list_(pa.string())), ("is_gold", pa.bool_()),
    ]),
}


def schema_for(options: ExportOptions) -> pa.Schema:
    return SCHEMAS["pairs-text" if options.text else options.shape]


# ---------------------------------------------------------------- containers


def stream_jsonl(lines: Iterable[str]) -> Iterator[bytes]:
    """The lines, newline-terminated, as UTF-8 chunks of about FLUSH_BYTES."""
    batch: list[str] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            batch.append("")
            yield "\n".join(batch).encode()
            batch, size = [], 0
    if batch:
        batch.append("")
        yield "\n".join(batch).encode()


def stream_gzip(chunks: Iterable[bytes], level: int = 6) -> Iterator[bytes]:
    """A gzip stream of the chunks (no file name or time in the header: the same bytes give the same file)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        if out := compressor.compress(chunk):
            yield out
    yield compressor.flush()


class _Drain:
    """A write-only file that hands back what was written since the last `take` (for streaming Parquet)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self.parts.append(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def stream_parquet(rows: Iterable[dict], schema: pa.Schema) -> Iterator[bytes]:
    """A Parquet file written ROW_GROUP rows at a time, its bytes handed on after each row group."""
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    for batch in _batches(rows, ROW_GROUP):
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        yield sink.take()
    writer.close()
    yield sink.take()


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def stream_export(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None) -> Iterator[bytes]:
    """The export's bytes, for the streaming containers (jsonl, jsonl.gz, parquet)."""
    if options.format == "parquet":
        return stream_parquet(export_rows(campaign, options, filters, stats), schema_for(options))
    chunks = stream_jsonl(export_lines(campaign, options, filters, stats))
    return stream_gzip(chunks) if options.format == "jsonl.gz" else chunks


def write_export(campaign: Campaign, options: ExportOptions, filters: ExportFilters, out: Path | str, *, zip_hf: bool = True) -> ExportStats:
    """Write the export to `out`: a file, or for hf a zip (zip_hf) or a `load_from_disk` folder."""
    out, stats = Path(out), ExportStats()
    out.parent.mkdir(parents=True, exist_ok=True)
    if options.format != "hf":
        with out.open("wb") as f:
            for chunk in stream_export(campaign, options, filters, stats):
                f.write(chunk)
        return stats
    held_out = held_out_prompts(campaign, filters, options)
    rows = export_rows(campaign, options, filters, stats)
    if not zip_hf:
        stats.splits = write_dataset_dict(rows, schema_for(options), lambda row: row["prompt_id"] in held_out, out)
        return stats
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        folder = Path(tmp) / export_filename(campaign, options).removesuffix(".zip")
        stats.splits = write_dataset_dict(rows, schema_for(options), lambda row: row["prompt_id"] in held_out, folder)
        zip_folder(folder, out)
    return stats


def held_out_prompts(campaign: Campaign, filters: ExportFilters, options: ExportOptions) -> set[str]:
    """External ids of the prompts in the test split: training.preferences.split_prompts over the selected prompts."""
    prompt_ids = select_judgements(campaign, filters).order_by().values_list("task__prompt__external_id", flat=True).distinct()
    return split_prompts(list(prompt_ids), options.test_fraction, options.seed)


def write_dataset_dict(rows: Iterable[dict], schema: pa.Schema, is_test: Callable[[dict], bool], out_dir: Path) -> dict[str, int]:
    """Save a DatasetDict {train, test} to out_dir (for `datasets.load_from_disk`); return rows per split.

    The rows go to one Arrow stream file per split, ROW_GROUP rows at a time; `datasets` then
    memory-maps them, so nothing is held whole.
    """
    from datasets import Dataset, DatasetDict

    counts = {"train": 0, "test": 0}
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        paths = {split: Path(tmp) / f"{split}.arrow" for split in counts}
        writers = {split: pa.ipc.new_stream(str(path), schema) for split, path in paths.items()}
        pending: dict[str, list[dict]] = {split: [] for split in counts}
        for row in rows:
            split = "test" if is_test(row) else "train"
            pending[split].append(row)
            counts[split] += 1
            if len(pending[split]) >= ROW_GROUP:
                writers[split].write_batch(pa.RecordBatch.from_pylist(pending[split], schema=schema))
                pending[split] = []
        for split, writer in writers.items():
            if pending[split]:
                writer.write_batch(pa.RecordBatch.from_pylist(pending[split], schema=schema))
            writer.close()
        dataset = DatasetDict({split: Dataset.from_file(str(path)) for split, path in paths.items()})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        # one shard per empty split: `datasets` writes none otherwise, and then cannot load it back
        dataset.save_to_disk(str(out_dir), num_shards={split: 1 for split, n in counts.items() if n == 0} or None)
        del dataset  # release the memory maps before the temporary files go
    return counts


def zip_folder(folder: Path, out: Path) -> None:
    """Zip `folder` (entries under its name) with fixed timestamps, so the same files give the same bytes."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(Path(folder.name) / path.relative_to(folder)), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as src, archive.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)


def export_filename(campaign: Campaign, options: ExportOptions) -> str:
    return f"{campaign.slug}-{options.shape}{EXTENSIONS[options.format]}"
