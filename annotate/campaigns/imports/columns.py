"""Which columns mean what: records from a file into the prompt rows and response rows that
annotate.campaigns.imports.batches checks and writes.

- prompts:     external_id | prompt_id | id (without an id column: derived from the content, so the same
               prompt always gets the same id), messages | text | prompt, context?, metadata?; other
               columns go into the prompt's metadata.
- responses:   prompt | prompt_id | external_id (the prompt's external_id), text | response | completion,
               model | model_name (or one model name for the whole file), generation_params?.
- preferences: a prompt with its responses per row, TRL style: prompt + chosen + rejected (models from
               chosen_model/rejected_model, model, or the file's model name), or prompt + completions
               (k responses; models from a parallel `models` list, model, or the file's model name).
               Conversational rows (lists of {role, content}) work too; without a prompt column the
               prompt is the turns the responses share (and Anthropic HH "Human:/Assistant:" text is
               split the same way). The dataset's own label is kept in generation_params.imported_as.
- A Label Studio JSON export (a list of tasks with `data`) is read as preferences: the prompt from
  data.prompt/text/input/question/instruction, responses from answer1, answer2, ... (or a list under
  responses/answers/items), and the first pairwise annotation kept in the prompt's metadata.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from annotate.campaigns.imports.readers import Record
from annotate.core.errors import ImportRejected


@dataclass
class Batch:
    prompts: list[dict] = field(default_factory=list)
    prompt_numbers: list[int] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    response_numbers: list[int] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_prompt(self, number: int, row: dict) -> None:
        self.prompts.append(row)
        self.prompt_numbers.append(number)

    def add_response(self, number: int, row: dict) -> None:
        self.responses.append(row)
        self.response_numbers.append(number)


ID_COLUMNS = ("external_id", "prompt_id", "id")
PROMPT_COLUMNS = ("messages", "text", "prompt")
RESPONSE_TEXT_COLUMNS = ("text", "response", "completion")
MODEL_COLUMNS = ("model", "model_name")
RESPONSE_ONLY_COLUMNS = ("chosen", "rejected", "completions", "responses", "chosen_model", "rejected_model", "model", "models")


def row_problem(exc: Exception) -> str:
    """What is wrong with a row, from the ValueError that says it (or the RecursionError of a value nested too deeply)."""
    return "a value is nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def columns_of(records: list[Record]) -> set[str]:
    return {key for _, record in records for key in record}


def first_of(columns: set[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in columns), None)


def _missing(what: str, columns: set[str], extra: str = "") -> ImportRejected:
    have = ", ".join(sorted(columns)[:30]) or "none"
    return ImportRejected(f"missing column: {what}{extra}. The file has: {have}.", field="file")


class PromptColumns:
    """Prompt rows from records: which column holds the prompt and which its id, decided once for the whole file."""

    def __init__(self, columns: set[str]):
        content = first_of(columns, PROMPT_COLUMNS)
        if content is None:
            raise _missing("messages, text or prompt (the prompt)", columns)
        self.content = content
        self.id_column = first_of(columns, ID_COLUMNS)
        self.used = {self.content, self.id_column, "context", "metadata", *RESPONSE_ONLY_COLUMNS}

    def reading(self) -> tuple:
        """What the columns decided: two mappers with the same reading map every record alike."""
        return self.content, self.id_column

    def add(self, records: list[Record], batch: Batch) -> None:
        for number, record in records:
            try:
                messages = _messages(record.get(self.content), self.content)
                context = _context(record.get("context"))
                row = {
                    "messages": messages,
                    "context": context,
                    "metadata": _metadata(record, self.used),
                    "external_id": _id(record, self.id_column, messages, context),
                }
                batch.add_prompt(number, row)
            except (ValueError, RecursionError) as exc:
                batch.errors.append({"row": number, "error": row_problem(exc)})

    def warnings(self) -> list[str]:
        return []


class ResponseColumns:
    """Response rows from records: the prompt, text and model columns."""

    def __init__(self, columns: set[str], default_model: str):
        self.prompt_column = first_of(columns, ("prompt", "prompt_id", "external_id"))
        self.text_column = first_of(columns, RESPONSE_TEXT_COLUMNS)
        self.model_column = first_of(columns, MODEL_COLUMNS)
        self.default_model = default_model
        if self.prompt_column is None:
            raise _missing("prompt (the external_id of the prompt each response answers)", columns)
        if self.text_column is None:
            raise _missing("text, response or completion (the response)", columns)
        if self.model_column is None and not default_model:
            raise _missing("model", columns, " (or give the model name for the whole file)")

    def reading(self) -> tuple:
        return self.prompt_column, self.text_column, self.model_column

    def add(self, records: list[Record], batch: Batch) -> None:
        for number, record in records:
            try:
                text = record.get(self.text_column)
                if text in (None, ""):
                    raise ValueError(f"{self.text_column} is empty")
                batch.add_response(number, {
                    "prompt": record.get(self.prompt_column),
                    "model": (record.get(self.model_column) if self.model_column else None) or self.default_model,
                    "text": _completion_text(text)[1],
                    "generation_params": jsonable(record.get("generation_params") or {}),
                })
            except (ValueError, RecursionError) as exc:
                batch.errors.append({"row": number, "error": row_problem(exc)})

    def warnings(self) -> list[str]:
        return []


class PreferenceColumns:
    """A prompt and its responses per record: prompt/chosen/rejected or prompt/completions."""

    def __init__(self, columns: set[str], first: dict | None, default_model: str, k: int):
        self.pairs = "chosen" in columns or "rejected" in columns
        if self.pairs and not {"chosen", "rejected"} <= columns:
            raise _missing("chosen" if "rejected" in columns else "rejected", columns)
        if not self.pairs and first_of(columns, ("completions", "responses")) is None:
            raise _missing("chosen and rejected, or completions", columns, " (with prompt)")
        if "prompt" not in columns and self.pairs and _is_plain((first or {}).get("chosen")):
            raise _missing("prompt", columns, " (chosen and rejected are plain text, so the prompt cannot be split off them)")
        if self.pairs and not default_model and not ({"chosen_model", "rejected_model"} <= columns or "model" in columns):
            raise _missing("chosen_model and rejected_model (or model)", columns, ", or give the model name for the whole file")
        self.list_column = first_of(columns, ("completions", "responses"))
        self.used = {"prompt", "chosen", "rejected", "chosen_model", "rejected_model", "model", "models", self.list_column, "context", "metadata", *ID_COLUMNS}
        self.id_column = first_of(columns, ID_COLUMNS)
        self.default_model, self.k = default_model, k
        self.short = 0  # prompts with fewer than k responses

    def reading(self) -> tuple:
        return self.pairs, self.list_column, self.id_column

    def add(self, records: list[Record], batch: Batch) -> None:
        for number, record in records:
            try:
                if self.pairs:
                    items = _pair(record, self.default_model)
                else:
                    assert self.list_column is not None  # __init__ rejects files with neither pairs nor a list column
                    items = _completions(record, self.list_column, self.default_model)
                messages, responses = _prompt_and_responses(record, items)
                context = _context(record.get("context"))
                external_id = _id(record, self.id_column, messages, context)
                batch.add_prompt(number, {"external_id": external_id, "messages": messages, "context": context, "metadata": _metadata(record, self.used)})
                for label, text, model in responses:
                    params = {"imported_as": label} if label else {}
                    batch.add_response(number, {"prompt": external_id, "model": model, "text": text, "generation_params": params})
                self.short += len(items) < self.k
            except (ValueError, RecursionError) as exc:
                batch.errors.append({"row": number, "error": row_problem(exc)})

    def warnings(self) -> list[str]:
        if not self.short:
            return []
        return [
            f"{self.short} prompt(s) have fewer than {self.k} responses, the number this campaign compares per task: "
            "their tasks are built once more responses arrive."
        ]


def _pair(record: dict, default_model: str) -> list[tuple[str, object, str]]:
    both = record.get("model") or default_model
    return [
        ("chosen", record.get("chosen"), record.get("chosen_model") or both),
        ("rejected", record.get("rejected"), record.get("rejected_model") or both),
    ]


def _completions(record: dict, column: str, default_model: str) -> list[tuple[str, object, str]]:
    values = record.get(column)
    if not isinstance(values, list) or not values:
        raise ValueError(f"{column} must be a non-empty list of responses")
    models = record.get("models")
    if models is not None and (not isinstance(models, list) or len(models) != len(values)):
        raise ValueError(f"models must be a list with one model name per response ({len(values)})")
    fallback = record.get("model") or default_model
    return [("", value, (models[i] if models else None) or fallback) for i, value in enumerate(values)]


def _prompt_and_responses(record: dict, items: list[tuple]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The prompt's turns and (label, text, model) per response; an implicit prompt is the turns all responses share."""
    split = [(label, *_completion_text(value), model) for label, value, model in items]
    responses = [(label, text, item_model or model) for label, _, text, item_model, model in split]
    if "prompt" in record:
        return _messages(record["prompt"], "prompt"), responses
    prefixes = [prefix for _, prefix, _, _, _ in split]
    if len(items) == 2 and all(isinstance(v, str) for _, v, _ in items):
        return _split_hh(items[0][1], items[1][1], responses)
    if not prefixes[0] or any(p != prefixes[0] for p in prefixes):
        raise ValueError("no prompt column, and the responses do not share their opening turns to take the prompt from")
    return _messages(prefixes[0], "prompt"), responses


def _completion_text(value) -> tuple[list, str, str | None]:
    """(turns before the answer, the answer's text, a model named beside it) of one response value."""
    if isinstance(value, str):
        return [], value, None
    if isinstance(value, dict):
        text = next((value[k] for k in ("text", "response", "content", "completion", "body") if isinstance(value.get(k), str)), None)
        if text is None:
            raise ValueError("a response object needs text (or response, content, completion)")
        model = value.get("model") or value.get("model_name")
        return [], text, model if isinstance(model, str) else None
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        cut = len(value)
        while cut and value[cut - 1].get("role") == "assistant":
            cut -= 1
        answer = [t.get("content") for t in value[cut:]]
        if not answer or not all(isinstance(a, str) for a in answer):
            raise ValueError("a conversational response must end with assistant turns with string content")
        return value[:cut], "\n\n".join(answer), None
    raise ValueError("each response must be text, a list of chat turns, or an object with text")


HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _split_hh(chosen: str, rejected: str, responses: list[tuple]) -> tuple[list[dict], list[tuple]]:
    """Anthropic HH text: the prompt is everything up to the last 'Assistant:' that chosen and rejected share."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("no prompt column, and chosen/rejected are not Human:/Assistant: dialogues to split the prompt from")
    parts = HH_TURN.split(chosen[:cut])
    turns = [
        {"role": "user" if who == "Human" else "assistant", "content": content.strip()}
        for who, content in zip(parts[1::2], parts[2::2])
    ]
    start = cut + len("\n\nAssistant:")
    answers = [chosen[start:].strip(), rejected[start:].strip()]
    return turns, [(label, answer, model) for (label, _, model), answer in zip(responses, answers)]


def _is_plain(value) -> bool:
    return isinstance(value, str) and "\n\nHuman:" not in value


def _messages(value, column: str):
    """What imports.normalise_messages takes: a string (one user turn) or a list of turns."""
    if value is None or value == "":
        raise ValueError(f"{column} is empty")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise ValueError(f"{column} must be text or a list of chat turns")
    return value


def _context(value) -> list | None:
    """Context passages; a single string (a CSV cell) is one passage."""
    return [value] if isinstance(value, str) else value


def _metadata(record: dict, used: set) -> dict:
    """The metadata column merged with the columns nothing else used."""
    metadata = jsonable(record.get("metadata") or {})
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be an object")
    extras = {k: jsonable(v) for k, v in record.items() if k not in used}
    return {**extras, **metadata}


def _id(record: dict, column: str | None, messages, context) -> str:
    """The row's own id, or (in a file without an id column) one derived from the prompt's content,
    so the same prompt always gets the same id."""
    if column is not None:
        value = record.get(column)
        if value in (None, ""):
            raise ValueError(f"{column} is empty")
        return value if isinstance(value, str) else str(jsonable(value))
    content = _content_json([messages, context])
    return "h-" + hashlib.sha256(content.encode()).hexdigest()[:16]


_content_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode  # json.dumps's text, one encoder for every row


def jsonable(value):
    """A value fit for a JSON column (Parquet and datasets give dates, decimals, bytes)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


# LABEL STUDIO

LS_PROMPT_KEYS = ("prompt", "text", "input", "question", "instruction", "messages")
LS_LIST_KEYS = ("responses", "answers", "completions", "items", "outputs")
LS_NUMBERED = re.compile(r"^(?:answer|response|completion|output|text)(?:[_-]?(\d+)|[_-]([a-h]))$")


def label_studio_record(task: dict) -> dict:
    """A Label Studio task as a preference record: {external_id, prompt, completions, metadata}; ValueError if it has no prompt or responses."""
    return _label_studio_task(task)


def _label_studio_task(task: dict) -> dict:
    data = task["data"]
    prompt_key = first_of(set(data), LS_PROMPT_KEYS)
    if prompt_key is None:
        raise ValueError(f"the task's data has no prompt (looked for {', '.join(LS_PROMPT_KEYS)}); it has {', '.join(sorted(data))}")
    keys, responses = _label_studio_responses(data, prompt_key)
    if not responses:
        raise ValueError("the task's data has no responses (looked for answer1, answer2, ... or a list under responses/answers/items)")
    models = data.get("models") if isinstance(data.get("models"), list) else []
    completions = []
    for i, (key, value) in enumerate(zip(keys, responses)):
        text = _completion_text(value)[1]
        model = data.get(f"{key}_model") or (models[i] if i < len(models) else None) or (value.get("model") if isinstance(value, dict) else None)
        completions.append({"text": text, "model": model} if model else text)
    own_id = data.get("external_id") or data.get("id")
    metadata = {"label_studio": {"task_id": task.get("id"), **_label_studio_preference(task, keys)}}
    metadata.update({k: jsonable(v) for k, v in data.items() if k not in {prompt_key, "models", "external_id", "id", *keys} and not k.endswith("_model")})
    record = {"prompt": data[prompt_key], "completions": completions, "metadata": metadata}
    if own_id not in (None, ""):
        record["external_id"] = str(own_id)
    elif task.get("id") is not None:
        record["external_id"] = f"ls-{task['id']}"
    return record


def _label_studio_responses(data: dict, prompt_key: str) -> tuple[list[str], list]:
    numbered = sorted(
        ((m.group(1) or m.group(2)).zfill(4), key)
        for key in data
        if key != prompt_key and (m := LS_NUMBERED.match(key)) and data[key] not in (None, "")
    )
    if numbered:
        keys = [key for _, key in numbered]
        return keys, [data[k] for k in keys]
    for key in LS_LIST_KEYS:
        if isinstance(data.get(key), list):
            return [f"{key}[{i}]" for i in range(len(data[key]))], list(data[key])
    return [], []


def _label_studio_preference(task: dict, keys: list[str]) -> dict:
    """The first pairwise choice of a kept annotation: 'left' is the first response, 'right' the second."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    for annotation in annotations:
        for item in annotation.get("result") or []:
            if isinstance(item, dict) and item.get("type") == "pairwise" and len(keys) >= 2:
                selected = (item.get("value") or {}).get("selected")
                preferred = {"left": keys[0], "right": keys[1]}.get(selected) if isinstance(selected, str) else None
                if preferred:
                    return {"annotations": len(annotations), "preferred": preferred}
    return {"annotations": len(annotations)}
