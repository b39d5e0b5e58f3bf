"""What an export is: shapes, formats, options and filters, and their parsing from query parameters.

Filters (`ExportFilters`): date range, model versions, round, labeler gold accuracy, task
agreement, flagged in/out/only; paused labelers and gold tasks are left out unless asked for,
surplus judgements are kept unless asked not to. `parse_export` turns query parameters (or a
snapshot's stored filters) into options and filters, or raises `InvalidExport` (400) naming
the allowed values.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, time
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from annotate.core.errors import DomainError
from annotate.core.text_input import ascii_int

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
MAX_LIST_ITEMS = 1_000  # ids, models, labelers or rounds in one filter


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
    include_evaluation: bool = True
    """Keep judgements of the campaign's evaluation prompts (training leaves them out: `annotate.campaigns.evaluation`)."""

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
        include_evaluation=_bool(params, "include_evaluation", True),
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
        # ASCII only: int() and float() also read "٣" and "１", which no client of ours means
        number = None if isinstance(value, str) and not value.isascii() else int(value) if integer else float(value)
    except (TypeError, ValueError):
        number = None
    inside = number is not None and (low < number < high if open_ends else low <= number <= high)
    if isinstance(value, bool) or not inside:
        kind = "an integer" if integer else "a number"
        bounds = f"strictly between {low} and {high}" if open_ends else f"from {low} to {high}"
        raise InvalidExport(f"{key} must be {kind} {bounds}; got {str(value)[:40]!r}.", field=key)
    return number


def _list(params, key) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in items):
        raise InvalidExport(f"{key} must be a comma-separated list (or a JSON list); got {str(value)[:40]!r}.", field=key)
    if len(items) > MAX_LIST_ITEMS:
        raise InvalidExport(f"{key} lists {len(items)} items; at most {MAX_LIST_ITEMS} are allowed.", field=key)
    return [str(item).strip() for item in items if str(item).strip()]


def _round(value: str) -> int:
    number = ascii_int(value)
    if number is None:
        raise InvalidExport(f"round must be non-negative integers; got {value[:40]!r}.", field="round")
    return number


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
