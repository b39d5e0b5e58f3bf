"""Reading import files into records: one dict per row, numbered from 1 (JSONL: the line number).

    fmt, records, errors = read_file(path_or_file, filename)

Formats: CSV (UTF-8, a header row; comma, or semicolon/tab separators; lists and objects in
cells as JSON text), JSONL, JSON (a list of objects; a list of Label Studio tasks is recognised),
Parquet, and a zip of a folder written by `datasets`' save_to_disk. Rows a reader cannot read are
returned as errors {row, error}; a file it cannot read at all raises ImportRejected.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import re
import tempfile
import zipfile
from pathlib import Path

from django.conf import settings

from annotate.core.errors import ImportRejected

MB = 1024 * 1024
FORMATS = ("csv", "jsonl", "json", "parquet", "hf", "label_studio")
Record = tuple[int, dict]


class FileTooLarge(ImportRejected):
    status = 413
    code = "too_large"


def limit(name: str) -> int:
    """Import limits, overridable in settings: IMPORT_MAX_BYTES, IMPORT_MAX_ROWS, IMPORT_SYNC_ROWS, IMPORT_SYNC_BYTES."""
    defaults = {"IMPORT_MAX_BYTES": 200 * MB, "IMPORT_MAX_ROWS": 200_000, "IMPORT_SYNC_ROWS": 5000, "IMPORT_SYNC_BYTES": 5 * MB}
    return int(getattr(settings, name, defaults[name]))


def detect_format(filename: str, head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        return "hf"
    suffix = Path(filename.lower()).suffix
    by_suffix = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".zip": "hf"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    first = head.lstrip()[:1]
    return {b"[": "json", b"{": "jsonl"}.get(first, "csv")


def read_file(source, filename: str, *, fmt: str = "", split: str = "") -> tuple[str, list[Record], list[dict]]:
    """(format, records, row errors) of a file given as a path or a binary file object."""
    with _binary(source) as stream:
        head = stream.read(8)
        stream.seek(0)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ImportRejected("the file is UTF-16 text; save it as UTF-8 (in Excel: 'CSV UTF-8').")
        fmt = fmt or detect_format(filename, head)
        max_rows = limit("IMPORT_MAX_ROWS")
        if fmt == "csv":
            records, errors = read_csv(stream, max_rows)
        elif fmt == "jsonl":
            records, errors = read_jsonl(stream, max_rows)
        elif fmt in ("json", "label_studio"):
            fmt, records, errors = read_json(stream, max_rows)
        elif fmt == "parquet":
            records, errors = read_parquet(stream, max_rows), []
        else:
            records, errors = read_hf_zip(stream, max_rows, split), []
    if not records and not errors:
        raise ImportRejected("the file has no rows.")
    return fmt, records, errors


class _binary:
    """A binary file object for a path (opened and closed here) or an open file (rewound, left open)."""

    def __init__(self, source):
        self.source = source
        self.opened = None

    def __enter__(self):
        if isinstance(source := self.source, (str, Path)):
            self.opened = open(source, "rb")
            return self.opened
        source.seek(0)
        return source

    def __exit__(self, *exc):
        if self.opened:
            self.opened.close()


def _too_many_rows(max_rows: int) -> ImportRejected:
    return FileTooLarge(f"the file has more than {max_rows:,} rows, the most one import takes; split it into several files.")


def _not_utf8(where: str) -> ImportRejected:
    return ImportRejected(f"the file is not UTF-8 text (undecodable bytes {where}); save it as UTF-8 (in Excel: 'CSV UTF-8').")


def read_csv(stream, max_rows: int) -> tuple[list[Record], list[dict]]:
    """Records keyed by the header; empty cells are left out. Row 1 is the first row after the header.

    The separator is a comma, or a semicolon or tab where the header has no comma (spreadsheets
    in many locales save CSV with semicolons).
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    records, errors, number = [], [], 0
    try:
        first = text.readline()
        separator = next((s for s in (",", ";", "\t") if s in first), ",")
        reader = csv.reader(itertools.chain([first], text), delimiter=separator)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise ImportRejected("the CSV file is empty (no header row).")
        if repeated := sorted({h for h in header if header.count(h) > 1}):
            raise ImportRejected(f"the header repeats column(s) {', '.join(map(repr, repeated))}.")
        for number, cells in enumerate(reader, 1):
            if not any(c.strip() for c in cells):
                continue
            if number > max_rows:
                raise _too_many_rows(max_rows)
            if len(cells) > len(header):
                errors.append({"row": number, "error": f"the row has {len(cells)} cells but the header names {len(header)} columns"})
                continue
            try:
                records.append((number, csv_cells({h: c for h, c in zip(header, cells) if h and c != ""})))
            except ValueError as exc:
                errors.append({"row": number, "error": str(exc)})
    except UnicodeDecodeError:
        raise _not_utf8(f"after row {number}" if number else "in the header") from None
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise ImportRejected(f"row {number + 1}: a cell is over {csv.field_size_limit():,} characters, more than the size limit.") from None
        raise ImportRejected(f"row {number + 1}: the CSV cannot be read ({exc}).") from None
    finally:
        text.detach()
    return records, errors


CSV_JSON_COLUMNS = ("messages", "context", "metadata", "generation_params", "completions", "responses", "models")
CSV_CHAT_COLUMNS = ("prompt", "chosen", "rejected")


def csv_cells(record: dict) -> dict:
    """CSV holds lists and objects as JSON text: decode the columns that take them.

    prompt/chosen/rejected are decoded only when they hold a list of chat turns; otherwise they stay text.
    """
    for column in CSV_JSON_COLUMNS:
        value = record.get(column)
        if value is not None and value.lstrip()[:1] in ("[", "{"):
            try:
                record[column] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{column} is not valid JSON ({exc.msg}, column {exc.colno})") from None
    for column in CSV_CHAT_COLUMNS:
        value = record.get(column)
        if value is not None and value.lstrip()[:1] == "[":
            try:
                turns = json.loads(value)
            except json.JSONDecodeError:
                continue
            if isinstance(turns, list) and turns and all(isinstance(t, dict) and "role" in t for t in turns):
                record[column] = turns
    return record


def read_jsonl(stream, max_rows: int) -> tuple[list[Record], list[dict]]:
    """One JSON object per line; a row's number is its line number."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    records, errors, number = [], [], 0
    try:
        for number, line in enumerate(text, 1):
            if not line.strip():
                continue
            if len(records) + len(errors) >= max_rows:
                raise _too_many_rows(max_rows)
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append({"row": number, "error": f"not valid JSON: {exc.msg} (column {exc.colno})"})
                continue
            if not isinstance(value, dict):
                errors.append({"row": number, "error": "each line must be a JSON object"})
                continue
            records.append((number, value))
    except UnicodeDecodeError:
        raise _not_utf8(f"on line {number + 1}") from None
    finally:
        text.detach()
    return records, errors


def read_json(stream, max_rows: int) -> tuple[str, list[Record], list[dict]]:
    """A JSON list of objects; a list of Label Studio tasks (objects with a `data` object) is recognised."""
    try:
        value = json.load(io.TextIOWrapper(stream, encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise _not_utf8("in the file") from None
    except json.JSONDecodeError as exc:
        raise ImportRejected(f"the file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    if not isinstance(value, list):
        raise ImportRejected("a JSON file must hold a list of objects (one per row); use JSONL for one object per line.")
    if len(value) > max_rows:
        raise _too_many_rows(max_rows)
    records, errors = [], []
    for number, item in enumerate(value, 1):
        if isinstance(item, dict):
            records.append((number, item))
        else:
            errors.append({"row": number, "error": "each item of the list must be an object"})
    is_label_studio = bool(records) and all(isinstance(r.get("data"), dict) for _, r in records)
    return ("label_studio" if is_label_studio else "json"), records, errors


def read_parquet(stream, max_rows: int) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream)
        if parquet.metadata.num_rows > max_rows:
            raise _too_many_rows(max_rows)
        rows = parquet.read().to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise ImportRejected(f"the file is not a readable Parquet file ({exc}).") from None
    return [(number, row) for number, row in enumerate(rows, 1)]


def read_hf_zip(stream, max_rows: int, split: str = "") -> list[Record]:
    """A zip of a folder written by Dataset.save_to_disk (or DatasetDict.save_to_disk: pick `split`)."""
    try:
        archive = zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        raise ImportRejected("the file is not a readable zip archive.") from None
    with archive, tempfile.TemporaryDirectory(prefix="arbiter-import-") as tmp:
        _check_zip(archive)
        archive.extractall(tmp)  # member names were checked: nothing lands outside tmp
        root = _dataset_root(Path(tmp))
        dataset = _load_dataset(root, split)
        if len(dataset) > max_rows:
            raise _too_many_rows(max_rows)
        rows = dataset.to_list()
        del dataset  # release the memory-mapped arrow files before the folder goes
    return [(number, row) for number, row in enumerate(rows, 1)]


def _check_zip(archive: zipfile.ZipFile) -> None:
    members = archive.infolist()
    if len(members) > 10_000:
        raise ImportRejected("the zip archive holds more than 10,000 files.")
    if sum(m.file_size for m in members) > 4 * limit("IMPORT_MAX_BYTES"):
        raise FileTooLarge(f"the zip archive unpacks to more than {4 * limit('IMPORT_MAX_BYTES') // MB} MB.")
    for member in members:
        name = member.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or re.match(r"^[A-Za-z]:", name):
            raise ImportRejected(f"the zip archive has an unsafe path: {name!r}.")


def _dataset_root(folder: Path) -> Path:
    for marker in ("dataset_dict.json", "state.json"):
        found = sorted(folder.rglob(marker), key=lambda p: len(p.parts))
        if found:
            return found[0].parent
    raise ImportRejected(
        "the zip holds no Hugging Face datasets folder (no state.json or dataset_dict.json): zip the folder that "
        "Dataset.save_to_disk wrote, or upload CSV, JSONL or Parquet."
    )


def _load_dataset(root: Path, split: str):
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(root))
    except Exception as exc:  # the library raises several kinds for a broken folder
        raise ImportRejected(f"the datasets folder cannot be loaded ({type(exc).__name__}: {exc}).") from None
    if isinstance(dataset, DatasetDict):
        splits = sorted(dataset)
        chosen = split or ("train" if "train" in dataset else (splits[0] if len(splits) == 1 else ""))
        if chosen not in dataset:
            raise ImportRejected(f"the dataset has splits {splits}; name the one to import (split).", field="split")
        dataset = dataset[chosen]
    return dataset
