"""Preference exports: stored judgements -> rows in one of three shapes -> a file, streamed.

The entry points. The options and filters are in `annotate.exports.options`, the rows in
`annotate.exports.rows` (shapes, selection, pseudonyms), the agreement in
`annotate.exports.agreement`, the containers in `annotate.exports.formats`. CHUNK, ROW_GROUP and
FLUSH_BYTES are read from this module when an export starts and handed down, so setting them
here takes effect.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from annotate.exports.formats import (
    FLUSH_BYTES,
    ROW_GROUP,
    schema_for,
    stream_gzip,
    stream_jsonl,
    stream_parquet,
    write_dataset_dict,
    zip_folder,
)
from annotate.exports.options import EXTENSIONS, ExportFilters, ExportOptions
from annotate.exports.rows import CHUNK, ExportStats, build_lines, build_rows, select_judgements
from annotate.models import Campaign
from training.preferences import PromptId, split_prompts

__all__ = ["CHUNK", "FLUSH_BYTES", "ROW_GROUP"]  # read at each export's start; a caller may set them here


# ---------------------------------------------------------------- entry points


def export_rows(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None) -> Iterator[dict]:
    """The rows of the export, in task then judgement order, in constant memory."""
    return build_rows(campaign, options, filters, stats, chunk=CHUNK)


def export_lines(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None) -> Iterator[str]:
    """The rows as compact JSON, one string each (no newline): `export_rows.build_lines`."""
    return build_lines(campaign, options, filters, stats, chunk=CHUNK)


def stream_export(campaign: Campaign, options: ExportOptions, filters: ExportFilters, stats: ExportStats | None = None) -> Iterator[bytes]:
    """The export's bytes, for the streaming containers (jsonl, jsonl.gz, parquet)."""
    if options.format == "parquet":
        return stream_parquet(export_rows(campaign, options, filters, stats), schema_for(options, has_context(campaign)), ROW_GROUP)
    chunks = stream_jsonl(export_lines(campaign, options, filters, stats), FLUSH_BYTES)
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
        stats.splits = write_dataset_dict(rows, schema_for(options, has_context(campaign)), lambda row: row["prompt_id"] in held_out, out, ROW_GROUP)
        return stats
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        folder = Path(tmp) / export_filename(campaign, options).removesuffix(".zip")
        stats.splits = write_dataset_dict(rows, schema_for(options, has_context(campaign)), lambda row: row["prompt_id"] in held_out, folder, ROW_GROUP)
        zip_folder(folder, out)
    return stats


def held_out_prompts(campaign: Campaign, filters: ExportFilters, options: ExportOptions) -> set[PromptId]:
    """External ids of the prompts in the test split: training.preferences.split_prompts over the selected prompts."""
    prompt_ids = select_judgements(campaign, filters).order_by().values_list("task__prompt__external_id", flat=True).distinct()
    return split_prompts(list(prompt_ids), options.test_fraction, options.seed)


def has_context(campaign: Campaign) -> bool:
    """Whether any of the campaign's prompts has context passages (its Arrow exports then carry a `context` column)."""
    return campaign.prompts.exclude(context=[]).exists()


def export_filename(campaign: Campaign, options: ExportOptions) -> str:
    return f"{campaign.slug}-{options.shape}{EXTENSIONS[options.format]}"


PREVIEW_LIMIT = 50_000
"""Up to this many selected judgements a preview counts the export's rows exactly (a dry run, no file)."""


def preview(campaign: Campaign, options: ExportOptions, filters: ExportFilters) -> dict:
    """What the export would hold: {rows, judgements, tasks}; beyond PREVIEW_LIMIT judgements only the
    SQL-side judgement count (rows and tasks None), since counting rows means building them."""
    selected = select_judgements(campaign, filters).count()
    if selected > PREVIEW_LIMIT:
        return {"rows": None, "judgements": selected, "tasks": None}
    stats = ExportStats()
    for _ in export_lines(campaign, options, filters, stats):
        pass
    return {"rows": stats.rows, "judgements": stats.judgements, "tasks": stats.tasks}
