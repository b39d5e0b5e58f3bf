"""Export containers: the rows as JSONL, gzipped JSONL or Parquet bytes, or a Hugging Face DatasetDict.

`jsonl`, `jsonl.gz`, `parquet` (row groups of ROW_GROUP rows) stream as bytes; `hf` is a
`datasets.DatasetDict` (train/test split by prompt with `split_prompts`) saved to a folder,
zipped for download. The Arrow schemas of the shapes serve Parquet and hf alike.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from annotate.exports.options import ExportOptions

ROW_GROUP = 10_000
"""Rows per Parquet row group / Arrow record batch: bounds the rows held at once."""
FLUSH_BYTES = 256 * 1024
"""JSONL bytes gathered before a chunk is handed to the response or the file."""


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


PASSAGES = pa.list_(pa.struct([("title", pa.string()), ("text", pa.string())]))


def schema_for(options: ExportOptions, with_context: bool = False) -> pa.Schema:
    """The shape's Arrow schema; with_context (the campaign has prompts with passages) adds the `context` column."""
    schema = SCHEMAS["pairs-text" if options.text else options.shape]
    return schema.append(pa.field("context", PASSAGES)) if with_context else schema


# ---------------------------------------------------------------- containers


def stream_jsonl(lines: Iterable[str], flush_bytes: int = FLUSH_BYTES) -> Iterator[bytes]:
    """The lines, newline-terminated, as UTF-8 chunks of about `flush_bytes`."""
    batch: list[str] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= flush_bytes:
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


def stream_parquet(rows: Iterable[dict], schema: pa.Schema, row_group: int = ROW_GROUP) -> Iterator[bytes]:
    """A Parquet file written `row_group` rows at a time, its bytes handed on after each row group."""
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    for batch in _batches(rows, row_group):
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


def write_dataset_dict(
    rows: Iterable[dict], schema: pa.Schema, is_test: Callable[[dict], bool], out_dir: Path, row_group: int = ROW_GROUP
) -> dict[str, int]:
    """Save a DatasetDict {train, test} to out_dir (for `datasets.load_from_disk`); return rows per split.

    The rows go to one Arrow stream file per split, `row_group` rows at a time; `datasets` then
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
            if len(pending[split]) >= row_group:
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
