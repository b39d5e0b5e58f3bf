"""Imports from files, in the browser and through the API: read, map the columns, check, write all or nothing.

    options = import_options({"kind": "preferences", "on_duplicate": "skip"})
    summary, run = import_upload(campaign, uploaded_file, options, user)   # run is set for a large file

annotate.campaigns.imports.readers reads the file into records; annotate.campaigns.imports.columns maps them to prompt
and response rows for the import kind (prompts, responses, preferences); annotate.campaigns.imports.batches checks
every row and writes all or nothing. On PostgreSQL, annotate.campaigns.imports.copying does the checking and writing
a chunk of rows at a time, with COPY, in one transaction (constant memory); on SQLite the whole file is read, checked
and then written. Above IMPORT_SYNC_ROWS rows (or IMPORT_SYNC_BYTES bytes) the
upload is stored under ARTIFACTS_DIR/uploads/<campaign id>/ and imported by a background run of
kind "import", with progress on the run's page. Limits: IMPORT_MAX_BYTES, IMPORT_MAX_ROWS (settings).
"""
from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.text import get_valid_filename

from annotate.campaigns.imports import copying
from annotate.campaigns.imports.batches import ON_DUPLICATE, ImportResult, import_batch
from annotate.campaigns.imports.columns import Batch, PreferenceColumns, PromptColumns, ResponseColumns, label_studio_record
from annotate.campaigns.imports.readers import FORMATS, MB, FileTooLarge, Source, limit, open_source, read_file
from annotate.core import sql
from annotate.core.errors import ImportRejected
from annotate.jobs.engine import InvalidParams, RunContext, RunFailed, register, start_run
from annotate.models import Campaign, Run

KINDS = ("prompts", "responses", "preferences")
__all__ = ["FORMATS", "KINDS", "FileTooLarge", "ImportOptions", "import_options", "import_source", "import_upload", "limit", "open_source", "read_file"]


@dataclass
class ImportOptions:
    kind: str
    on_duplicate: str = "error"
    model: str = ""  # the model that wrote the responses, where no column names one
    create_models: bool = False  # register model names not seen before (off: an unknown name is an error)
    format: str = ""  # empty: detect from the name and the first bytes
    split: str = ""  # which split of a saved DatasetDict


def import_options(data: Mapping) -> ImportOptions:
    """Checked options from a form, a request or a run's params; ImportRejected names the bad field."""
    kind = data.get("kind") or ""
    if kind not in KINDS:
        raise ImportRejected(f"kind must be one of {list(KINDS)}.", field="kind")
    on_duplicate = data.get("on_duplicate") or "error"
    if on_duplicate not in ON_DUPLICATE:
        raise ImportRejected(f"on_duplicate must be one of {list(ON_DUPLICATE)}.", field="on_duplicate")
    fmt = data.get("format") or ""
    if fmt not in ("", *FORMATS):
        raise ImportRejected(f"format must be one of {list(FORMATS)} (or empty to detect it).", field="format")
    model, split = data.get("model") or "", data.get("split") or ""
    if not isinstance(model, str) or len(model) > 200:
        raise ImportRejected("model must be a model name of at most 200 characters.", field="model")
    if not isinstance(split, str) or len(split) > 100:
        raise ImportRejected("split must be a split name.", field="split")
    create = data.get("create_models", False)
    if isinstance(create, str):
        create = create.lower() in ("1", "true", "on", "yes")
    return ImportOptions(kind, on_duplicate, model.strip(), bool(create), fmt, split)


def column_mapper(campaign: Campaign, source: Source, options: ImportOptions):
    """What the records' columns mean for the import kind (ImportRejected names a missing column); None without records.

    Where the source has not read every row's columns yet (a large JSONL file), a mapper that checks
    each chunk's new columns (ColumnsChanged if they change the reading), or, if the first rows'
    columns cannot be read, one from every row's columns.
    """
    if source.fmt == "label_studio":
        if options.kind == "responses":
            raise ImportRejected("a Label Studio export holds prompts with their responses: import it as preferences (or prompts).", field="kind")
        source.convert(label_studio_record)
    if not source.settled:
        with contextlib.suppress(ImportRejected):
            if (mapper := _mapper_for(campaign, source, options)) is not None:
                return _UnsettledColumns(mapper, lambda: _mapper_for(campaign, source, options), source)
        source.settle()
    return _mapper_for(campaign, source, options)


def _mapper_for(campaign: Campaign, source: Source, options: ImportOptions):
    if source.first is None:
        return None
    if options.kind == "prompts":
        return PromptColumns(source.columns)
    if options.kind == "responses":
        return ResponseColumns(source.columns, options.model)
    return PreferenceColumns(source.columns, source.first, options.model, campaign.responses_per_task)


class ColumnsChanged(Exception):
    """A row past the first pass brought a column that changes how the file's columns read."""


class _UnsettledColumns:
    """A mapper taken from the first rows' columns, checked again before each chunk whose rows bring new ones.

    Nothing it mapped before a ColumnsChanged is kept: the import starts again (a rolled-back transaction)
    with the columns of every row, so what is imported is what a first pass over every row would give.
    """

    def __init__(self, mapper, remap, source: Source):
        self.mapper, self.remap, self.source = mapper, remap, source
        self.seen = len(source.columns)

    def add(self, records, batch: Batch) -> None:
        if len(self.source.columns) != self.seen:  # chunks() has added this chunk's columns
            self.seen = len(self.source.columns)
            try:
                same = self.remap().reading() == self.mapper.reading()
            except ImportRejected:
                same = False
            if not same:
                raise ColumnsChanged
        self.mapper.add(records, batch)

    def warnings(self) -> list[str]:
        return self.mapper.warnings()


def import_source(campaign: Campaign, source: Source, options: ImportOptions, *, on_progress=None) -> dict:
    """Map the rows for the import kind, check them all, write all or nothing; a summary for people.

    On PostgreSQL a chunk at a time, written with COPY in one transaction (copying); elsewhere
    every row is read, checked and then written in batches. on_progress(rows done, rows) is
    called as rows are checked.
    """
    mapper = column_mapper(campaign, source, options)
    try:
        result = _import_rows(campaign, source, mapper, options, on_progress)
    except ColumnsChanged:  # rare: a late row's column changes the reading (nothing was written)
        source.settle()
        mapper = column_mapper(campaign, source, options)
        result = _import_rows(campaign, source, mapper, options, on_progress)
    warnings = []
    if options.kind == "prompts" and (source.fmt == "label_studio" or {"chosen", "completions"} & source.columns):
        warnings.append("the file also holds responses; they were not imported (import it as preferences to keep them).")
    warnings += mapper.warnings() if mapper else []
    return {"format": source.fmt, "kind": options.kind, "rows": source.rows, **result.as_dict(), "warnings": warnings, "errors": []}


def _import_rows(campaign: Campaign, source: Source, mapper, options: ImportOptions, on_progress) -> copying.Outcome | ImportResult:
    if copying.available():
        return copying.import_rows(
            campaign, source, mapper, on_duplicate=options.on_duplicate, create_models=options.create_models, progress=on_progress
        )
    return _import_whole(campaign, source, mapper, options, on_progress)


def _import_whole(campaign: Campaign, source: Source, mapper, options: ImportOptions, on_progress) -> ImportResult:
    batch = Batch()
    for records, errors in source.chunks(5000):
        batch.errors += errors
        if mapper is not None:
            mapper.add(records, batch)
    return import_batch(
        campaign,
        prompts=batch.prompts,
        responses=batch.responses,
        prompt_numbers=batch.prompt_numbers,
        response_numbers=batch.response_numbers,
        on_duplicate=options.on_duplicate,
        create_models=options.create_models,
        errors=batch.errors,
        before_write=(lambda: on_progress(source.rows, source.rows)) if on_progress else None,
    )


def import_upload(campaign: Campaign, upload, options: ImportOptions, user=None) -> tuple[dict | None, Run | None]:
    """Import an uploaded file now (summary, None), or hand a large one to a background run (None, run)."""
    size = upload.size or 0
    if size > limit("IMPORT_MAX_BYTES"):
        raise FileTooLarge(f"the file is {size / MB:.1f} MB; the limit is {limit('IMPORT_MAX_BYTES') / MB:.0f} MB. Split it into several files.", field="file")
    if size == 0:
        raise ImportRejected("the file is empty.", field="file")
    if size > limit("IMPORT_SYNC_BYTES"):
        return None, start_import_run(campaign, upload, options, user)
    stream = Path(upload.temporary_file_path()) if hasattr(upload, "temporary_file_path") else upload.file
    with open_source(stream, upload.name or "", fmt=options.format, split=options.split) as source:
        if source.rows > limit("IMPORT_SYNC_ROWS"):
            return None, start_import_run(campaign, upload, options, user)
        return import_source(campaign, source, options), None


def start_import_run(campaign: Campaign, upload, options: ImportOptions, user=None) -> Run:
    """Store the upload under ARTIFACTS_DIR/uploads/<campaign id>/<random>/ and start an import run on it."""
    name = get_valid_filename(Path(upload.name or "upload").name)[-100:] or "upload"
    relative = Path("uploads") / str(campaign.pk) / uuid.uuid4().hex / name
    target = Path(settings.ARTIFACTS_DIR) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return start_run("import", campaign=campaign, params={**asdict(options), "path": str(relative), "filename": upload.name or name}, user=user)


# THE BACKGROUND RUN


def validate_import_params(campaign: Campaign | None, params: dict) -> dict:
    if campaign is None:
        raise InvalidParams("an import belongs to a campaign.", field="campaign")
    try:
        options = import_options(params)
    except ImportRejected as exc:
        raise InvalidParams(exc.message, field=exc.field) from None
    path = params.get("path")
    uploads = (Path(settings.ARTIFACTS_DIR) / "uploads" / str(campaign.pk)).resolve()
    resolved = (Path(settings.ARTIFACTS_DIR) / str(path)).resolve() if isinstance(path, str) and path else None
    # uploads/<campaign id>/<random>/<name>: the run deletes <random>/ when done, so nothing else may live there
    if resolved is None or resolved.parent.parent != uploads or not resolved.is_file():
        raise InvalidParams("path must name a file uploaded to this campaign (under ARTIFACTS_DIR/uploads).", field="path")
    filename = params.get("filename") or resolved.name
    return {**asdict(options), "path": path, "filename": str(filename)[:200]}


def run_import(ctx: RunContext) -> dict:
    params, campaign = ctx.params, ctx.campaign
    path = Path(settings.ARTIFACTS_DIR) / params["path"]
    options = import_options(params)
    try:
        ctx.progress(0.02, f"reading {params['filename']}")
        with _progress_reporter(ctx) as on_progress, open_source(path, params["filename"], fmt=options.format, split=options.split) as source:
            ctx.progress(0.05, f"{source.rows:,} rows; checking and writing them")
            summary = import_source(campaign, source, options, on_progress=on_progress)
    except ImportRejected as exc:
        Run.objects.filter(pk=ctx.run.pk).update(result={"detail": exc.message, "errors": exc.errors})
        lines = [exc.message] + [f"row {e['row']}: {e['error']}" for e in exc.errors[:20]]
        raise RunFailed("\n".join(lines)) from None
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    ctx.log(f"imported {summary['prompts_created']} prompts and {summary['responses_created']} responses; built {summary['tasks_built']} tasks")
    return summary


@contextlib.contextmanager
def _progress_reporter(ctx: RunContext):
    """on_progress(done, rows) for an import: at most once a second, through a connection of its own,
    since the import's transaction keeps everything it writes unseen until the end."""
    side = connections.create_connection(DEFAULT_DB_ALIAS) if copying.available() else None
    last = 0.0

    def on_progress(done: int, rows: int) -> None:
        nonlocal last
        ctx.check_cancelled()
        if time.monotonic() - last < 1.0 and done < rows:
            return
        last = time.monotonic()
        fraction = 0.05 + 0.9 * done / max(rows, 1)
        message = f"checked {done:,} of {rows:,} rows" + (" (written in one transaction: visible once all are in)" if side else "")
        if side is None:
            ctx.progress(fraction, message)
            return
        with side.cursor() as cursor:
            sql.set_run_progress(cursor, ctx.run.pk, fraction, message[:300])

    try:
        yield on_progress
    finally:
        if side is not None:
            side.close()


register("import", validate_import_params, run_import, ml=False)
