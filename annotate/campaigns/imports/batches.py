"""Importing prompts and responses from rows (JSON lists from the API; files go through annotate.campaigns.imports.files).

All or nothing: every row is checked first; one broken row rejects the batch, and the
error list names each broken row by its number (0-based for a JSON body, as in the
request; file imports pass their own numbers, counted from 1).

Duplicates are prompts whose external_id is already in the campaign or repeats an earlier
row. They are errors, or, with on_duplicate="skip", left out (with the responses that came
with them) and listed in `ImportResult.skipped`.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction

from annotate.campaigns.task_building import build_tasks
from annotate.core.errors import ImportRejected
from annotate.models import Campaign, ModelVersion, Prompt, Response

ROLES = ("system", "user", "assistant")
MAX_ROWS = 10_000  # per JSON request
MAX_TEXT_CHARS = 100_000  # a prompt (all its turns), its context, or one response
MAX_ERRORS_SHOWN = 1000
ON_DUPLICATE = ("error", "skip")
_IN_LOOKUP_LIMIT = 5000  # above this, read the campaign's ids instead of a huge IN (SQLite caps parameters)


@dataclass
class ImportResult:
    prompts_created: int = 0
    responses_created: int = 0
    tasks_built: int = 0
    skipped: list[dict] = field(default_factory=list)  # [{row, external_id, reason}]
    responses_skipped: int = 0  # responses that came with a skipped prompt

    def as_dict(self) -> dict:
        return {
            "prompts_created": self.prompts_created,
            "responses_created": self.responses_created,
            "tasks_built": self.tasks_built,
            "skipped": self.skipped[:MAX_ERRORS_SHOWN],
            "skipped_count": len(self.skipped),
            "responses_skipped": self.responses_skipped,
        }


def normalise_messages(row: dict) -> list[dict]:
    """Chat turns from `messages` (a list of {role, content}) or `text` (one user turn)."""
    if "messages" in row and "text" in row:
        raise ValueError("give either messages or text, not both")
    if "text" in row:
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        return [{"role": "user", "content": text}]
    messages = row.get("messages")
    if isinstance(messages, str) and messages.strip():
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} (or give text)")
    turns = []
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise ValueError(f"each message needs a role in {list(ROLES)} and string content")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "user" for t in turns):
        raise ValueError("messages need at least one user turn")
    return turns


def normalise_context(value) -> list[dict]:
    """Context passages as [{title, text}]; plain strings become untitled passages (at most MAX_TEXT_CHARS of text in all)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("context must be a list of passages")
    passages = []
    for item in value:
        if isinstance(item, str):
            passages.append({"title": "", "text": item})
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            passages.append({"title": str(item.get("title", "")), "text": item["text"]})
        else:
            raise ValueError("each context passage must be a string or {title?, text}")
    check_size("the context", sum(len(p["text"]) for p in passages))
    return passages


def external_id_of(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError("external_id must be a non-empty string of at most 200 characters")
    _check_string(value, "external_id")
    return value


def check_storable(value, what: str) -> None:
    """Raise ValueError unless `value` can be stored in a JSON column (see storable_json)."""
    storable_json(value, what)


_to_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def storable_json(value, what: str) -> str:
    """`value` as JSON text, or ValueError if a string in it cannot be stored: a NUL, which PostgreSQL
    text and jsonb refuse, or a lone surrogate, which is not UTF-8 (json.loads lets both through)."""
    if not value and isinstance(value, (dict, list)):  # most contexts and metadata: nothing to check
        return "{}" if isinstance(value, dict) else "[]"
    if value.__class__ is dict and len(value) == 1:
        ((key, item),) = value.items()
        if key.__class__ is str and item.__class__ is str:  # {"imported_as": "chosen"} on every response of a file
            return _one_pair_json(key, item, what)
    return _storable_json(value, what)


@functools.lru_cache(maxsize=256)
def _one_pair_json(key: str, item: str, what: str) -> str:
    return _storable_json({key: item}, what)


def _storable_json(value, what: str) -> str:
    try:
        text = _to_json(value)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except ValueError:
        raise ValueError(f"{what} holds NaN or Infinity, which JSON cannot store") from None
    if "\\u0000" in text and _holds_nul(value):  # the text alone cannot tell \u0000 from an escaped backslash
        raise ValueError(f"{what} contains a NUL character (\\u0000), which cannot be stored")
    _check_string(text, what)
    return text


def _holds_nul(value) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            pending += [*item, *item.values()]
        elif isinstance(item, list):
            pending += item
    return False


def _check_string(text: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character (\\u0000), which cannot be stored")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} contains a lone surrogate ({text[exc.start]!a}), which is not valid Unicode") from None


def check_size(what: str, chars: int) -> None:
    if chars > MAX_TEXT_CHARS:
        raise ValueError(f"{what} is {chars:,} characters long; the limit is {MAX_TEXT_CHARS:,}")


def _check_rows(rows) -> None:
    if not isinstance(rows, list):
        raise ImportRejected("the body must be a JSON list of rows.")
    if not rows:
        raise ImportRejected("the list of rows is empty.")
    if len(rows) > MAX_ROWS:
        raise ImportRejected(f"at most {MAX_ROWS} rows per request; send several batches.")


def import_prompts(campaign: Campaign, rows) -> int:
    """Create the prompts of `rows`; returns how many. Raises ImportRejected listing bad rows."""
    _check_rows(rows)
    return import_batch(campaign, prompts=rows).prompts_created


def import_responses(campaign: Campaign, rows) -> tuple[int, int]:
    """Create responses, then build tasks from them; returns (responses created, tasks built)."""
    _check_rows(rows)
    result = import_batch(campaign, responses=rows)
    return result.responses_created, result.tasks_built


def import_batch(
    campaign: Campaign,
    *,
    prompts: Sequence = (),
    responses: Sequence = (),
    prompt_numbers: Sequence[int] | None = None,
    response_numbers: Sequence[int] | None = None,
    on_duplicate: str = "error",
    create_models: bool = True,
    errors: list[dict] | None = None,
    before_write: Callable[[], None] | None = None,
) -> ImportResult:
    """Check every prompt row and response row, then write them all (and build tasks) in one transaction.

    Response rows name their prompt by external_id: a prompt already in the campaign or one of
    `prompts`. With create_models=False a response must name a registered model version.
    `errors` are problems the caller already found (a file row it could not read); any error
    rejects the whole batch. Row numbers default to the rows' 0-based positions. `before_write` is
    called once everything has passed the checks, before the transaction starts.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise ImportRejected(f"on_duplicate must be one of {list(ON_DUPLICATE)}.", field="on_duplicate")
    errors = list(errors or [])
    result = ImportResult()
    prompt_numbers = list(prompt_numbers) if prompt_numbers is not None else list(range(len(prompts)))
    response_numbers = list(response_numbers) if response_numbers is not None else list(range(len(responses)))
    new_prompts, skipped_ids = _check_prompts(campaign, prompts, prompt_numbers, on_duplicate, errors, result)
    parsed = _check_responses(campaign, responses, response_numbers, new_prompts, skipped_ids, errors, result)
    check_models(parsed, create_models, errors)
    if errors:
        total = len(set(prompt_numbers) | set(response_numbers) | {e["row"] for e in errors})
        raise _rejected(errors, total)
    if before_write:
        before_write()
    try:
        with transaction.atomic():
            _write(campaign, new_prompts, parsed, result)
    except IntegrityError as exc:
        raise ImportRejected(
            "some of these prompts were added by another import meanwhile; nothing was imported, please try again."
        ) from exc
    return result


def _rejected(errors: list[dict], total: int) -> ImportRejected:
    return rows_rejected(sorted(errors, key=lambda e: e["row"]), total, len({e["row"] for e in errors}), len(errors))


def rows_rejected(errors: list[dict], total: int, bad_rows: int, error_count: int) -> ImportRejected:
    """The rejection of a file with bad rows: `errors` sorted by row (the first MAX_ERRORS_SHOWN are listed)."""
    shown = "" if error_count <= MAX_ERRORS_SHOWN else f" (the first {MAX_ERRORS_SHOWN} errors are listed)"
    return ImportRejected(
        f"{bad_rows} of {total} rows are invalid; nothing was imported{shown}.", errors=errors[:MAX_ERRORS_SHOWN]
    )


def _existing_prompt_ids(campaign: Campaign, external_ids: Iterable) -> dict[str, int]:
    wanted = {str(e) for e in external_ids if isinstance(e, (str, int)) and not isinstance(e, bool)}
    if not wanted:
        return {}
    rows = Prompt.objects.filter(campaign=campaign)
    if len(wanted) <= _IN_LOOKUP_LIMIT:
        rows = rows.filter(external_id__in=wanted)
    return {ext: pk for ext, pk in rows.values_list("external_id", "id") if ext in wanted}


def _check_prompts(campaign, rows, numbers, on_duplicate, errors, result) -> tuple[dict[str, tuple[int, Prompt]], set[str]]:
    """Valid new prompts by external_id (with their row numbers), and the ids skipped as duplicates."""
    existing = _existing_prompt_ids(campaign, (r.get("external_id") for r in rows if isinstance(r, dict)))
    new: dict[str, tuple[int, Prompt]] = {}
    skipped: set[str] = set()
    for number, row in zip(numbers, rows):
        try:
            if not isinstance(row, dict):
                raise ValueError("row must be an object")
            external_id = external_id_of(row.get("external_id"))
            prompt = prompt_from_row(campaign, external_id, row)
            duplicate = _duplicate_reason(external_id, existing, new)
            if duplicate and on_duplicate == "skip":
                skipped.add(external_id)
                result.skipped.append({"row": number, "external_id": external_id, "reason": duplicate})
                continue
            if duplicate:
                raise ValueError(f"external_id {external_id!r} {duplicate}")
            new[external_id] = (number, prompt)
        except ValueError as exc:
            errors.append({"row": number, "error": str(exc)})
    return new, skipped


def _duplicate_reason(external_id: str, existing: dict, new: dict) -> str:
    if external_id in existing:
        return "already exists in this campaign"
    if external_id in new:
        return f"repeats row {new[external_id][0]}"
    return ""


def prompt_from_row(campaign: Campaign, external_id: str, row: dict) -> Prompt:
    """The prompt of a checked row (ValueError says what is wrong with it)."""
    messages, context, metadata = prompt_fields(row)
    return Prompt(campaign=campaign, external_id=external_id, messages=messages, context=context, metadata=metadata)


def prompt_fields(row: dict, *, as_json: bool = False) -> tuple:
    """(messages, context, metadata) of a prompt row, as values or (as_json) as JSON text; ValueError says what is wrong."""
    messages = normalise_messages(row)
    check_size("the prompt", sum(len(t["content"]) for t in messages))
    context = normalise_context(row.get("context"))
    metadata = row.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be an object")
    texts = storable_json(messages, "the prompt"), storable_json(context, "the context"), storable_json(metadata, "metadata")
    return texts if as_json else (messages, context, metadata)


def _check_responses(campaign, rows, numbers, new_prompts, skipped_ids, errors, result) -> list[tuple]:
    """(row number, prompt external_id, model name, text, generation_params) of each valid response."""
    wanted = (r.get("prompt") for r in rows if isinstance(r, dict))
    known = set(new_prompts) | set(_existing_prompt_ids(campaign, wanted))
    parsed = []
    for number, row in zip(numbers, rows):
        try:
            if not isinstance(row, dict):
                raise ValueError("row must be an object")
            external_id = external_id_of(row.get("prompt"))
            if external_id in skipped_ids:
                result.responses_skipped += 1
                continue
            if external_id not in known:
                raise ValueError(f"prompt {external_id!r} is not in this campaign")
            _, model, text, params = response_from_row(row)
            parsed.append((number, external_id, model, text, params))
        except ValueError as exc:
            errors.append({"row": number, "error": str(exc)})
    return parsed


def response_from_row(row: dict, *, as_json: bool = False) -> tuple[str, str, str, dict | str]:
    """(prompt external_id, model name, text, generation_params (as_json: as JSON text)) of a response row;
    ValueError says what is wrong."""
    external_id = external_id_of(row.get("prompt"))
    model = row.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise ValueError("model must be a non-empty model name")
    _check_string(model, "model")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    check_size("the response", len(text))
    _check_string(text, "the response")
    params = row.get("generation_params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError("generation_params must be an object")
    params_json = storable_json(params, "generation_params")
    return external_id, model.strip(), text, params_json if as_json else params


def check_models(parsed: list[tuple], create_models: bool, errors: list[dict]) -> None:
    """Without create_models, every model name must already be registered."""
    if create_models or not parsed:
        return
    names = {p[2] for p in parsed}
    registered = set(ModelVersion.objects.filter(name__in=names).values_list("name", flat=True))
    unknown = names - registered
    if not unknown:
        return
    known = list(ModelVersion.objects.order_by("name").values_list("name", flat=True)[:11])
    hint = f"registered models: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''}" if known else "no model is registered yet"
    for number, _, name, _, _ in parsed:
        if name in unknown:
            errors.append({"row": number, "error": f"model {name!r} is not registered ({hint}); fix the name or allow new model names"})


def _write(campaign: Campaign, new_prompts: dict, parsed: list[tuple], result: ImportResult) -> None:
    created = Prompt.objects.bulk_create([p for _, p in new_prompts.values()], batch_size=2000)
    prompt_ids = {p.external_id: p.pk for p in created if p.pk is not None}
    if len(prompt_ids) < len(created):  # a backend that does not return ids from bulk inserts
        prompt_ids = _existing_prompt_ids(campaign, new_prompts)
    missing = {p[1] for p in parsed} - set(prompt_ids)
    prompt_ids.update(_existing_prompt_ids(campaign, missing))
    models = {name: _model_version(name) for name in {p[2] for p in parsed}}
    Response.objects.bulk_create(
        (Response(prompt_id=prompt_ids[ext], model_version=models[name], text=text, generation_params=params) for _, ext, name, text, params in parsed),
        batch_size=2000,
    )
    touched = sorted({prompt_ids[p[1]] for p in parsed})
    built = 0
    for start in range(0, len(touched), 2000):  # chunks keep each IN list under SQLite's parameter cap
        built += build_tasks(campaign, touched[start : start + 2000])
    result.prompts_created, result.responses_created, result.tasks_built = len(created), len(parsed), built


def _model_version(name: str) -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(name=name, defaults={"kind": ModelVersion.Kind.POLICY})
    return version
