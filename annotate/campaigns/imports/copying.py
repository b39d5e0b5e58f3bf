"""File imports on PostgreSQL at constant memory (SQLite, the demo, checks and writes a file whole in batches).

The file is read a chunk of rows at a time; each chunk is mapped and checked as
annotate.campaigns.imports.batches checks rows (the same row errors), then COPYed into the tables
(prompts, responses, tasks and their slots) inside one transaction: nothing is visible before the
commit at the end, and one bad row anywhere rolls everything back. After the first bad row the
rest is still checked, so every bad row is listed, but nothing more is written.

Duplicates are found in the database, not in memory: the external ids this import takes are COPYed
into a temporary table with their row numbers (so a repeat names the row it repeats) and the chunk's
ids are looked up there and among the campaign's prompts. New rows take their ids from the tables'
sequences up front, so a chunk's responses and tasks point at its prompts without reading them back.
Tasks are built as build_tasks builds them (task_groups): for the prompts of the file at once from
their own responses, and at the end for prompts that were there before (a file of responses).

Speed: rows are formatted here as COPY text; a chunk's COPYs run in a thread of their own while the
next chunk is read and checked (PostgreSQL and Python work side by side, each on its own core), and
the cyclic garbage collector runs once per chunk rather than thousands of times.
"""
from __future__ import annotations

import contextlib
import gc
import os
import random
import re
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from annotate.campaigns.imports.batches import (
    MAX_ERRORS_SHOWN,
    check_models,
    external_id_of,
    prompt_fields,
    response_from_row,
    rows_rejected,
)
from annotate.campaigns.imports.columns import Batch
from annotate.campaigns.imports.readers import Source
from annotate.campaigns.task_building import build_tasks, task_groups
from annotate.core.errors import ImportRejected
from annotate.models import Campaign, ModelVersion, Prompt, Response, Task, TaskResponse

CHUNK_ROWS = 5000
IDS = "arbiter_import_ids"  # temporary: external_id, row, prompt_id of every prompt row this import takes
TOUCHED = "arbiter_import_touched"  # temporary: prompts from before the import that gained responses


def available() -> bool:
    """COPY and temporary tables: PostgreSQL only."""
    return connection.vendor == "postgresql"


@dataclass
class Outcome:
    prompts_created: int = 0
    responses_created: int = 0
    tasks_built: int = 0
    skipped: list[dict] = field(default_factory=list)  # the first MAX_ERRORS_SHOWN
    skipped_count: int = 0
    responses_skipped: int = 0
    errors: list[dict] = field(default_factory=list)  # the first MAX_ERRORS_SHOWN, by row
    error_count: int = 0
    bad_rows: int = 0

    def as_dict(self) -> dict:
        return {
            "prompts_created": self.prompts_created,
            "responses_created": self.responses_created,
            "tasks_built": self.tasks_built,
            "skipped": self.skipped,
            "skipped_count": self.skipped_count,
            "responses_skipped": self.responses_skipped,
        }


@dataclass(slots=True)
class _Written:
    """What task_groups needs of a response."""

    pk: int
    model_version_id: int


def import_rows(campaign: Campaign, source: Source, mapper, *, on_duplicate: str, create_models: bool,
                progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Check every row of `source` (mapped by `mapper`, a columns.*Columns) and write them all in one
    transaction; ImportRejected lists the bad rows (and nothing is written)."""
    done = 0
    try:
        with transaction.atomic(), connection.cursor() as cursor, _collected_per_chunk() as collect:
            chunks = _Chunks(campaign, cursor, on_duplicate, create_models)
            try:
                for records, errors in source.chunks(CHUNK_ROWS):
                    chunks.add(records, errors, mapper)
                    done += len(records) + len(errors)
                    if progress:
                        progress(done, source.rows)
                    collect()
                chunks.finish(source.rows)
            finally:
                chunks.writer.close()
    except (IntegrityError, psycopg.errors.UniqueViolation) as exc:
        raise ImportRejected(
            "some of these prompts were added by another import meanwhile; nothing was imported, please try again."
        ) from exc
    return chunks.outcome


@contextlib.contextmanager
def _collected_per_chunk() -> Iterator[Callable[[], object]]:
    """Python's cyclic garbage collector off while the rows are read and checked, with a pass over the young
    objects after each chunk instead (what the import yields, called per chunk).

    A chunk's thousands of short-lived dicts and lists set off collection after collection, and as the chunk
    outlives them, full ones that go over every object of the process (Django's too): more CPU than mapping
    the rows. Rows make no reference cycles; the pass per chunk frees any that something else makes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield lambda: gc.collect(1)
    finally:
        if enabled:
            gc.enable()


class _Chunks:
    """One import's transaction: each chunk checked against the database, then COPYed while no row has failed."""

    def __init__(self, campaign: Campaign, cursor, on_duplicate: str, create_models: bool):
        self.campaign, self.cursor = campaign, cursor
        self.on_duplicate, self.create_models = on_duplicate, create_models
        self.outcome = Outcome()
        self.models: dict[str, int] = {}
        self.earlier: dict[str, int | None] = {}  # the chunk's responses' prompts from before the chunk
        self.sequences: dict[str, str] = {}
        self.now = str(timezone.now())  # as COPY reads it: 2026-11-30 17:04:12.123456+00:00
        # display orders: one generator per import, seeded from the system's (a SystemRandom call per task costs more than its COPY)
        self.shuffle = random.Random(os.urandom(32)).shuffle
        self.writer = _Writer(cursor)
        self.row_checks_off = _row_checks_off(cursor)
        if self.row_checks_off:  # take the lock each row's foreign key check would have taken, once
            cursor.execute(f"SELECT 1 FROM {Campaign._meta.db_table} WHERE id = %s FOR KEY SHARE", [campaign.pk])
        cursor.execute(f"DROP TABLE IF EXISTS {IDS}, {TOUCHED}")
        cursor.execute(f"CREATE TEMPORARY TABLE {IDS} (external_id text PRIMARY KEY, row integer NOT NULL, prompt_id bigint)")
        cursor.execute(f"CREATE TEMPORARY TABLE {TOUCHED} (prompt_id bigint NOT NULL)")

    # CHECKING

    def add(self, records, reader_errors: list[dict], mapper) -> None:
        batch = Batch(errors=list(reader_errors))
        if mapper is not None:
            mapper.add(records, batch)
        checked = self._parse_prompts(batch)
        parsed = self._parse_responses(batch)
        self.writer.wait()  # the database work starts here: the previous chunk's COPYs first
        prompts, skipped_ids = self._check_prompts(batch, checked)
        responses = self._check_responses(batch, parsed, prompts, skipped_ids)
        check_models(responses, self.create_models, batch.errors)
        self._count_errors(batch.errors)
        if not self.outcome.error_count:
            self._write(prompts, responses)
        else:  # keep the ids for telling repeats in the rows still to check
            self._copy(IDS, ("external_id", "row"), (f"{_text(ext)}\t{number}\n" for ext, (number, _) in prompts.items()))
        self.writer.send()

    def _parse_prompts(self, batch: Batch) -> list[tuple[int, str, tuple]]:
        """(row number, external_id, (messages, context, metadata) as JSON text) of each prompt row that is valid alone."""
        checked = []
        for number, row in zip(batch.prompt_numbers, batch.prompts):
            try:
                external_id = external_id_of(row.get("external_id"))
                checked.append((number, external_id, prompt_fields(row, as_json=True)))
            except ValueError as exc:
                batch.errors.append({"row": number, "error": str(exc)})
        return checked

    def _check_prompts(self, batch: Batch, checked: list[tuple[int, str, tuple]]) -> tuple[dict[str, tuple[int, tuple]], set[str]]:
        """The chunk's valid new prompts by external_id: (row number, (messages, context, metadata))."""
        taken = self._taken({ext for _, ext, _ in checked})
        new: dict[str, tuple[int, tuple]] = {}
        skipped: set[str] = set()
        for number, external_id, fields in checked:
            duplicate = taken.get(external_id) or (f"repeats row {new[external_id][0]}" if external_id in new else "")
            if duplicate and self.on_duplicate == "skip":
                skipped.add(external_id)
                self.outcome.skipped_count += 1
                if len(self.outcome.skipped) < MAX_ERRORS_SHOWN:
                    self.outcome.skipped.append({"row": number, "external_id": external_id, "reason": duplicate})
            elif duplicate:
                batch.errors.append({"row": number, "error": f"external_id {external_id!r} {duplicate}"})
            else:
                new[external_id] = (number, fields)
        return new, skipped

    def _taken(self, external_ids: set[str]) -> dict[str, str]:
        """Why each of these ids is taken: by an earlier row of this file, or by a prompt already in the campaign."""
        if not external_ids:
            return {}
        self.cursor.execute(
            f"SELECT u.ext, i.row FROM unnest(%s::text[]) AS u(ext) LEFT JOIN {IDS} i ON i.external_id = u.ext "
            f"WHERE i.row IS NOT NULL OR EXISTS (SELECT 1 FROM {Prompt._meta.db_table} p WHERE p.campaign_id = %s AND p.external_id = u.ext)",
            [list(external_ids), self.campaign.pk],
        )
        return {ext: f"repeats row {row}" if row is not None else "already exists in this campaign" for ext, row in self.cursor.fetchall()}

    def _parse_responses(self, batch: Batch) -> list[tuple[int, str | None, tuple | str]]:
        """(row number, prompt external_id or None, the response or what is wrong with it) of each response row;
        with no valid external_id, what is wrong with it."""
        parsed: list[tuple[int, str | None, tuple | str]] = []
        for number, row in zip(batch.response_numbers, batch.responses):
            try:
                external_id = external_id_of(row.get("prompt"))
            except ValueError as exc:
                parsed.append((number, None, str(exc)))
                continue
            try:
                parsed.append((number, external_id, response_from_row(row, as_json=True)))
            except ValueError as exc:
                parsed.append((number, external_id, str(exc)))
        return parsed

    def _check_responses(self, batch: Batch, parsed: list, prompts: dict, skipped_ids: set[str]) -> list[tuple]:
        """(row number, prompt external_id, model name, text, generation_params) of each valid response."""
        wanted = {r.get("prompt") for r in batch.responses} - set(prompts) - skipped_ids
        known = self._known_prompts({str(w) for w in wanted if isinstance(w, (str, int)) and not isinstance(w, bool)})
        self.earlier = known
        valid = []
        for number, external_id, response in parsed:
            if external_id in skipped_ids:
                self.outcome.responses_skipped += 1
            elif external_id is not None and external_id not in prompts and external_id not in known:
                batch.errors.append({"row": number, "error": f"prompt {external_id!r} is not in this campaign"})
            elif isinstance(response, str):  # the external_id's error, or the response's
                batch.errors.append({"row": number, "error": response})
            else:
                valid.append((number, *response))
        return valid

    def _known_prompts(self, external_ids: set[str]) -> dict[str, int | None]:
        """Prompt ids of these external ids, among the campaign's prompts or this import's (None once writing stopped)."""
        if not external_ids:
            return {}
        self.cursor.execute(
            f"SELECT u.ext, coalesce(p.id, i.prompt_id) FROM unnest(%s::text[]) AS u(ext) "
            f"LEFT JOIN {Prompt._meta.db_table} p ON p.campaign_id = %s AND p.external_id = u.ext "
            f"LEFT JOIN {IDS} i ON i.external_id = u.ext WHERE p.id IS NOT NULL OR i.external_id IS NOT NULL",
            [list(external_ids), self.campaign.pk],
        )
        return dict(self.cursor.fetchall())

    def _count_errors(self, errors: list[dict]) -> None:
        # chunks come in the file's order, so the first errors of the file are the first chunks' errors
        errors.sort(key=lambda e: e["row"])
        self.outcome.errors += errors[: MAX_ERRORS_SHOWN - len(self.outcome.errors)]
        self.outcome.error_count += len(errors)
        self.outcome.bad_rows += len({e["row"] for e in errors})

    # WRITING

    def _write(self, prompts: dict, responses: list[tuple]) -> None:
        prompt_ids = dict(zip(prompts, self._next_ids(Prompt, len(prompts))))
        campaign_id, now = self.campaign.pk, self.now
        self._copy(
            Prompt._meta.db_table,
            ("id", "campaign_id", "external_id", "messages", "context", "metadata", "created_at"),
            (f"{prompt_ids[ext]}\t{campaign_id}\t{_text(ext)}\t{_text(messages)}\t{_text(context)}\t{_text(metadata)}\t{now}\n"
             for ext, (_, (messages, context, metadata)) in prompts.items()),
        )
        self._copy(IDS, ("external_id", "row", "prompt_id"), (f"{_text(ext)}\t{number}\t{prompt_ids[ext]}\n" for ext, (number, _) in prompts.items()))
        response_ids = self._next_ids(Response, len(responses))
        models = {name: self._model_id(name) for name in {r[2] for r in responses}}

        def prompt_id(ext: str) -> int:
            pid = prompt_ids.get(ext) or self.earlier[ext]
            assert pid is not None, ext  # an earlier prompt has no id only once writing stopped, and then _write is not called
            return pid

        self._copy(
            Response._meta.db_table,
            ("id", "prompt_id", "model_version_id", "text", "generation_params", "created_at"),
            (f"{pk}\t{prompt_id(ext)}\t{models[name]}\t{_text(text)}\t{_text(params)}\t{now}\n"
             for pk, (_, ext, name, text, params) in zip(response_ids, responses)),
        )
        self._hold(Prompt, sorted({pid for pid in map(self.earlier.get, {r[1] for r in responses}) if pid}))
        by_prompt: dict[int, list[_Written]] = {}
        for pk, (_, ext, name, _, _) in zip(response_ids, responses):
            by_prompt.setdefault(prompt_id(ext), []).append(_Written(pk, models[name]))
        new_ids = set(prompt_ids.values())
        self._copy(TOUCHED, ("prompt_id",), (f"{pid}\n" for pid in by_prompt if pid not in new_ids))
        self._write_tasks({pid: rs for pid, rs in by_prompt.items() if pid in new_ids})
        self.outcome.prompts_created += len(prompts)
        self.outcome.responses_created += len(responses)

    def _write_tasks(self, by_prompt: dict[int, list[_Written]]) -> None:
        """Tasks for prompts new in this import: all their responses are in this chunk (one row each)."""
        groups = [(pid, members) for pid, written in sorted(by_prompt.items()) for members in task_groups(written, self.campaign.responses_per_task, shuffle=self.shuffle)]
        task_ids = self._next_ids(Task, len(groups))
        campaign_id, overlap = self.campaign.pk, self.campaign.overlap
        rest = f"0\tf\t{overlap}\t0\t{overlap}\t{self.now}\n"  # priority, is_gold, judgements needed and received, remaining, created_at
        self._copy(
            Task._meta.db_table,
            ("id", "campaign_id", "prompt_id", "priority", "is_gold", "judgements_needed", "judgements_received", "remaining", "created_at"),
            (f"{tid}\t{campaign_id}\t{pid}\t{rest}" for tid, (pid, _) in zip(task_ids, groups)),
        )
        self._copy(
            TaskResponse._meta.db_table,
            ("task_id", "response_id", "position"),
            (f"{tid}\t{r.pk}\t{position}\n" for tid, (_, members) in zip(task_ids, groups) for position, r in enumerate(members)),
        )
        self.outcome.tasks_built += len(groups)

    def finish(self, rows: int) -> None:
        """Reject the file if any row failed; otherwise build the tasks of prompts that were there before."""
        self.writer.wait()
        if self.outcome.error_count:
            raise rows_rejected(self.outcome.errors, rows, self.outcome.bad_rows, self.outcome.error_count)
        after = 0
        while True:  # a page of prompt ids at a time, in order
            self.cursor.execute(f"SELECT DISTINCT prompt_id FROM {TOUCHED} WHERE prompt_id > %s ORDER BY 1 LIMIT 2000", [after])
            page = [pid for (pid,) in self.cursor.fetchall()]
            if not page:
                break
            self.outcome.tasks_built += build_tasks(self.campaign, page)
            after = page[-1]
        self.cursor.execute(f"DROP TABLE {IDS}, {TOUCHED}")
        if self.row_checks_off:  # back on for the rest of an enclosing transaction
            self.cursor.execute("SET LOCAL session_replication_role = origin")

    def _next_ids(self, model, count: int) -> list[int]:
        """`count` ids from the table's sequence, taken now, as inserts without an id would take them."""
        if not count:
            return []
        table = model._meta.db_table
        if table not in self.sequences:
            self.cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
            self.sequences[table] = self.cursor.fetchone()[0]
        self.cursor.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [self.sequences[table], count])
        return [pk for (pk,) in self.cursor.fetchall()]

    def _model_id(self, name: str) -> int:
        if name not in self.models:
            version, _ = ModelVersion.objects.get_or_create(name=name, defaults={"kind": ModelVersion.Kind.POLICY})
            self.models[name] = version.pk
            self._hold(ModelVersion, [version.pk])
        return self.models[name]

    def _hold(self, model, ids: list[int]) -> None:
        """Without the foreign key checks, lock the rows new rows point at as the checks would (no one deletes them meanwhile)."""
        if self.row_checks_off and ids:
            self.cursor.execute(f"SELECT 1 FROM {model._meta.db_table} WHERE id = ANY(%s) FOR KEY SHARE", [ids])

    def _copy(self, table: str, columns: tuple[str, ...], lines) -> None:
        """Queue a COPY of rows given as lines of COPY's text format (tab-separated, text through _text), written
        in one piece (psycopg's write_row, a row at a time, cost more than checking the row) of bytes (encoded
        here: the writing thread only waits on the socket, and seldom needs the interpreter lock)."""
        self.writer.queue(f"COPY {table} ({', '.join(columns)}) FROM STDIN", "".join(lines).encode())


class _Writer:
    """A chunk's COPYs, run by a thread of their own: PostgreSQL writes one chunk while this thread reads and checks the next.

    The connection is never used by both at once: a chunk's COPYs are queued, sent once its queries are done
    (send), and waited for before the next query (wait), so they run in the order they would have run here.
    """

    def __init__(self, cursor):
        self.cursor = cursor
        self.queued: list[tuple[str, bytes]] = []
        self.pending: Future | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-copy")

    def queue(self, statement: str, data: bytes) -> None:
        self.queued.append((statement, data))

    def send(self) -> None:
        if self.queued:
            copies, self.queued = self.queued, []
            self.pending = self.thread.submit(self._copy_all, copies)

    def _copy_all(self, copies: list[tuple[str, bytes]]) -> None:
        for statement, data in copies:
            with self.cursor.copy(statement) as copy:
                copy.write(data)

    def wait(self) -> None:
        """Until the COPYs sent are done; their error, if any, is raised here."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        """Wait for COPYs still running (without raising: an error on its way out stays the one raised), stop the thread."""
        if self.pending is not None:
            futures.wait([self.pending])
            self.pending = None
        self.thread.shutdown()


_COPY_SPECIAL = re.compile(r"[\\\n\r\t]")


def _text(value: str) -> str:
    """Text in COPY's text format: its backslashes, newlines, carriage returns and tabs escaped."""
    if _COPY_SPECIAL.search(value) is None:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _row_checks_off(cursor) -> bool:
    """Turn off the foreign key checks PostgreSQL runs for every inserted row, where the role may
    (a superuser, or one granted SET on session_replication_role), for this transaction only.

    Each check looks the referenced row up and locks it: seven per imported pair, which cost more than
    the COPY itself (a million rows: minutes at the commit). Every reference an import writes is one it
    made itself in this transaction (ids from the sequences) or a row it locks as the check would have
    (the campaign, the model versions, prompts from before), so nothing can point nowhere. pg_restore
    loads data the same way (--disable-triggers).
    """
    try:
        with transaction.atomic():
            cursor.execute("SET LOCAL session_replication_role = replica")
    except DatabaseError:
        return False
    return True
