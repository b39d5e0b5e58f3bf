"""Importing prompts and responses from rows (JSON lists from the API; files build on this).

All or nothing: every row is checked first; one broken row rejects the batch, and the
error list names each broken row by its number (0-based, as in the request body).
"""
from __future__ import annotations

from django.db import transaction

from .errors import ImportRejected
from .models import Campaign, ModelVersion, Prompt, Response
from .task_building import build_tasks

ROLES = ("system", "user", "assistant")
MAX_ROWS = 10_000


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
    """Context passages as [{title, text}]; plain strings become untitled passages."""
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
    return passages


def _external_id(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError("external_id must be a non-empty string of at most 200 characters")
    return value


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
    prompts, errors, seen = [], [], set()
    existing = set(
        Prompt.objects.filter(campaign=campaign, external_id__in=[r.get("external_id") for r in rows if isinstance(r, dict)])
        .values_list("external_id", flat=True)
    )
    for number, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise ValueError("row must be an object")
            external_id = _external_id(row.get("external_id"))
            if external_id in seen or external_id in existing:
                raise ValueError(f"external_id {external_id!r} already exists in this campaign")
            seen.add(external_id)
            metadata = row.get("metadata", {})
            if not isinstance(metadata, dict):
                raise ValueError("metadata must be an object")
            prompts.append(
                Prompt(
                    campaign=campaign,
                    external_id=external_id,
                    messages=normalise_messages(row),
                    context=normalise_context(row.get("context")),
                    metadata=metadata,
                )
            )
        except ValueError as exc:
            errors.append({"row": number, "error": str(exc)})
    if errors:
        raise ImportRejected(f"{len(errors)} of {len(rows)} rows are invalid; nothing was imported.", errors=errors)
    with transaction.atomic():
        Prompt.objects.bulk_create(prompts, batch_size=2000)
    return len(prompts)


def import_responses(campaign: Campaign, rows) -> tuple[int, int]:
    """Create responses, then build tasks from them; returns (responses created, tasks built)."""
    _check_rows(rows)
    wanted = {r.get("prompt") for r in rows if isinstance(r, dict)}
    prompt_ids = dict(
        Prompt.objects.filter(campaign=campaign, external_id__in=[str(w) for w in wanted if w is not None]).values_list(
            "external_id", "id"
        )
    )
    parsed, errors = [], []
    for number, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise ValueError("row must be an object")
            external_id = _external_id(row.get("prompt"))
            if external_id not in prompt_ids:
                raise ValueError(f"prompt {external_id!r} is not in this campaign")
            model = row.get("model")
            if not isinstance(model, str) or not model.strip() or len(model) > 200:
                raise ValueError("model must be a non-empty model name")
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("text must be a non-empty string")
            params = row.get("generation_params", {})
            if not isinstance(params, dict):
                raise ValueError("generation_params must be an object")
            parsed.append((prompt_ids[external_id], model.strip(), text, params))
        except ValueError as exc:
            errors.append({"row": number, "error": str(exc)})
    if errors:
        raise ImportRejected(f"{len(errors)} of {len(rows)} rows are invalid; nothing was imported.", errors=errors)
    with transaction.atomic():
        models = {name: _model_version(name) for name in {p[1] for p in parsed}}
        Response.objects.bulk_create(
            (Response(prompt_id=pid, model_version=models[name], text=text, generation_params=params) for pid, name, text, params in parsed),
            batch_size=2000,
        )
        built = build_tasks(campaign, {p[0] for p in parsed})
    return len(parsed), built


def _model_version(name: str) -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(name=name, defaults={"kind": ModelVersion.Kind.POLICY})
    return version
