"""Reading import files into records: one dict per row, numbered from 1 (JSONL: the line number).

    with open_source(path_or_file, filename) as source:     # a first pass: format, columns, row count
        for records, errors in source.chunks(5000):          # then the rows, a chunk at a time
            ...
    fmt, records, errors = read_file(path_or_file, filename)  # or every row at once

A JSONL file's first pass parses only its first HEAD_ROWS lines (the rest are counted, not parsed): its
columns are those rows' until the rows are read (source.settled is False till then; settle() reads
them all), so each line of a large file is parsed once, not twice.

Formats: CSV (UTF-8, a header row; comma, or semicolon/tab separators; lists and objects in
cells as JSON text), JSONL, JSON (a list of objects; a list of Label Studio tasks is recognised),
Parquet, and a zip of a folder written by `datasets`' save_to_disk. CSV and JSONL are read line by
line, Parquet by record batches and a datasets folder by slices, so a large file is never held
whole (a JSON list is: it is one value). Rows a reader cannot read are errors {row, error}; a file
it cannot read at all raises ImportRejected (field "file").
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from annotate.core.errors import ImportRejected

if TYPE_CHECKING:
    from datasets import Dataset

MB = 1024 * 1024
FORMATS = ("csv", "jsonl", "json", "parquet", "hf", "label_studio")
HEAD_ROWS = 5000  # a JSONL file's rows parsed by the first pass, for the columns
Record = tuple[int, dict]


class FileTooLarge(ImportRejected):
    status = 413
    code = "too_large"


class BadRow(str):
    """Why a row could not be read (a reader yields it in place of the row's record)."""


def limit(name: str) -> int:
    """Import limits, overridable in settings: IMPORT_MAX_BYTES, IMPORT_MAX_ROWS, IMPORT_SYNC_ROWS, IMPORT_SYNC_BYTES.

    On PostgreSQL files are streamed and written with COPY at constant memory, so the defaults
    allow ten times more than on SQLite (the demo), where a file is checked and written whole.
    """
    streaming = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    defaults = {
        "IMPORT_MAX_BYTES": (2048 if streaming else 200) * MB,
        "IMPORT_MAX_ROWS": 2_000_000 if streaming else 200_000,
        "IMPORT_SYNC_ROWS": 5000,
        "IMPORT_SYNC_BYTES": 5 * MB,
    }
    return int(getattr(settings, name, defaults[name]))


def rejected(message: str) -> ImportRejected:
    """A file that cannot be read at all."""
    return ImportRejected(message, field="file")


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
    """(format, records, row errors) of a file given as a path or a binary file object, every row at once."""
    with open_source(source, filename, fmt=fmt, split=split) as opened:
        records, errors = [], []
        for chunk_records, chunk_errors in opened.chunks(5000):
            records += chunk_records
            errors += chunk_errors
        return opened.fmt, records, errors


@contextlib.contextmanager
def open_source(source, filename: str, *, fmt: str = "", split: str = "") -> Iterator[Source]:
    """The file read once through (format, columns, rows, the first record; ImportRejected for a file
    it cannot read, FileTooLarge past IMPORT_MAX_ROWS), ready to be read again in chunks."""
    with contextlib.ExitStack() as stack, _binary(source) as stream:
        head = stream.read(8)
        stream.seek(0)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise rejected("the file is UTF-16 text; save it as UTF-8 (in Excel: 'CSV UTF-8').")
        opened = Source(fmt or detect_format(filename, head), stream, split, stack)
        opened.scan()
        yield opened


class Source:
    """A file being imported: fmt, columns (every column any row has), rows, first (the first record).

    settled: whether columns holds every row's columns; when not (a large JSONL file), they are those of its
    first HEAD_ROWS rows, and chunks() adds each row's as it reads it.
    """

    def __init__(self, fmt: str, stream, split: str, stack: contextlib.ExitStack):
        self.fmt, self.stream, self.split, self.stack = fmt, stream, split, stack
        self.columns: set[str] = set()
        self.rows = 0
        self.first: dict | None = None
        self.settled = True
        self.loaded: list | None = None  # a JSON list, read whole
        self.dataset: Dataset | None = None  # a datasets folder, unpacked for as long as the source is open

    def scan(self) -> None:
        max_rows = limit("IMPORT_MAX_ROWS")
        if self.fmt in ("json", "label_studio"):
            self.loaded = read_json(self.stream)
            if len(self.loaded) > max_rows:
                raise _too_many_rows(max_rows)
            self.fmt = "label_studio" if _is_label_studio(self.loaded) else "json"
        elif self.fmt == "parquet":
            self._scan_parquet(max_rows)
        elif self.fmt == "hf":
            self.dataset = dataset = self.stack.enter_context(open_dataset(self.stream, self.split))
            self.columns, self.rows = set(dataset.column_names), len(dataset)
            if self.rows > max_rows:
                raise _too_many_rows(max_rows)
        if self.fmt in ("parquet", "hf"):
            self.first = next((record for _, record in self._items() if isinstance(record, dict)), None)  # these readers yield only dicts
        elif self.fmt == "jsonl":
            self._scan_lines(max_rows)
        else:
            self._scan_rows(max_rows)
        if not self.rows:
            raise rejected("the file has no rows.")

    def _scan_rows(self, max_rows: int) -> None:
        rows = 0
        for rows, (_, item) in enumerate(self._items(), 1):
            if rows > max_rows:
                raise _too_many_rows(max_rows)
            if isinstance(item, dict):
                self.columns.update(item)
                if self.first is None:
                    self.first = item
        self.rows = rows

    def _scan_lines(self, max_rows: int) -> None:
        """JSONL: count the rows, parsing only the first HEAD_ROWS for the columns."""
        rows = 0
        self.stream.seek(0)
        for rows, (_, line) in enumerate(_jsonl_lines(self.stream), 1):
            if rows > max_rows:
                raise _too_many_rows(max_rows)
            if rows <= HEAD_ROWS and isinstance(item := _json_line(line), dict):
                self.columns.update(item)
                if self.first is None:
                    self.first = item
        self.rows, self.settled = rows, rows <= HEAD_ROWS

    def settle(self) -> None:
        """Read every row for its columns (where the first pass read only the first rows')."""
        if not self.settled:
            self._scan_rows(limit("IMPORT_MAX_ROWS"))
            self.settled = True

    def _scan_parquet(self, max_rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.ParquetFile(self.stream).metadata
        except (pa.ArrowException, OSError) as exc:
            raise rejected(f"the file is not a readable Parquet file ({exc}).") from None
        if metadata.num_rows > max_rows:
            raise _too_many_rows(max_rows)
        self.columns, self.rows = set(metadata.schema.to_arrow_schema().names), metadata.num_rows

    def convert(self, convert_record) -> None:
        """Rewrite every record of a file read whole (a Label Studio export); a ValueError makes its row an error."""
        if self.loaded is None:
            raise ValueError("convert() rewrites a file read whole (JSON); scan() this source first.")
        converted: list = []
        for _, item in _list_items(self.loaded):
            try:
                converted.append(convert_record(item) if isinstance(item, dict) else item)
            except ValueError as exc:
                converted.append(BadRow(str(exc)))
            except RecursionError:
                converted.append(BadRow("a value is nested too deeply"))
        self.loaded, self.columns, self.first = converted, set(), None
        self._scan_rows(limit("IMPORT_MAX_ROWS"))

    def chunks(self, size: int) -> Iterator[tuple[list[Record], list[dict]]]:
        """(records, row errors) of up to `size` rows at a time, in the file's order."""
        items = self._items()
        while chunk := list(itertools.islice(items, size)):
            records = [(n, item) for n, item in chunk if isinstance(item, dict)]
            errors = [{"row": n, "error": str(item)} for n, item in chunk if isinstance(item, BadRow)]
            if not self.settled:
                update = self.columns.update
                for _, record in records:
                    update(record)
            yield records, errors

    def _items(self) -> Iterator[tuple[int, dict | BadRow]]:
        if self.loaded is not None:
            return _list_items(self.loaded)
        if self.dataset is not None:
            return _dataset_items(self.dataset)
        self.stream.seek(0)
        return {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}[self.fmt](self.stream)


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
    return FileTooLarge(f"the file has more than {max_rows:,} rows, the most one import takes; split it into several files.", field="file")


def _not_utf8(where: str) -> ImportRejected:
    return rejected(f"the file is not UTF-8 text (undecodable bytes {where}); save it as UTF-8 (in Excel: 'CSV UTF-8').")


def _list_items(values: list) -> Iterator[tuple[int, dict | BadRow]]:
    for number, item in enumerate(values, 1):
        yield number, item if isinstance(item, (dict, BadRow)) else BadRow("each item of the list must be an object")


# CSV


def read_csv(stream) -> Iterator[tuple[int, dict | BadRow]]:
    """Records keyed by the header; empty cells are left out. Row 1 is the first row after the header.

    The separator is a comma, or a semicolon or tab where the header has no comma (spreadsheets
    in many locales save CSV with semicolons). Quotes are read strictly: a quoted cell that is
    never closed would otherwise swallow every row after it into one cell.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    number = 0
    try:
        first = text.readline()
        separator = next((s for s in (",", ";", "\t") if s in first), ",")
        reader = csv.reader(itertools.chain([first], text), delimiter=separator, strict=True)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise rejected("the CSV file is empty (no header row).")
        if repeated := sorted({h for h in header if header.count(h) > 1}):
            raise rejected(f"the header repeats column(s) {', '.join(map(repr, repeated))}.")
        for number, cells in enumerate(reader, 1):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                yield number, BadRow(f"the row has {len(cells)} cells but the header names {len(header)} columns")
                continue
            try:
                yield number, csv_cells({h: c for h, c in zip(header, cells) if h and c != ""})
            except ValueError as exc:
                yield number, BadRow(str(exc))
    except UnicodeDecodeError:
        raise _not_utf8(f"after row {number}" if number else "in the header") from None
    except csv.Error as exc:
        raise _unreadable_csv_row(number + 1, exc) from None
    finally:
        text.detach()


def _unreadable_csv_row(number: int, exc: csv.Error) -> ImportRejected:
    if "field larger than field limit" in str(exc):
        error = f"a cell is over {csv.field_size_limit():,} characters, more than the size limit"
    elif "unexpected end of data" in str(exc):
        error = 'a quoted cell starts here and its closing quote (") never comes: the rest of the file would be one cell'
    else:
        error = f"the CSV cannot be read here ({exc}); a quote inside a quoted cell is written twice (\"\")"
    return ImportRejected(f"row {number}: {error}; nothing was imported.", field="file", errors=[{"row": number, "error": error}])


CSV_JSON_COLUMNS = ("messages", "context", "metadata", "generation_params", "completions", "responses", "models")
CSV_CHAT_COLUMNS = ("prompt", "chosen", "rejected")


def csv_cells(record: dict) -> dict:
    """CSV holds lists and objects as JSON text: decode the columns that take them.

    prompt/chosen/rejected are decoded only when they hold a list of chat turns; otherwise they stay text.
    """
    for column in CSV_JSON_COLUMNS:
        value = record.get(column)
        if value is not None and value.lstrip()[:1] in ("[", "{"):
            record[column] = _json_cell(column, value)
    for column in CSV_CHAT_COLUMNS:
        value = record.get(column)
        if value is not None and value.lstrip()[:1] == "[":
            try:
                turns = json.loads(value)
            except (ValueError, RecursionError):
                continue
            if isinstance(turns, list) and turns and all(isinstance(t, dict) and "role" in t for t in turns):
                record[column] = turns
    return record


def _json_cell(column: str, value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{column} is not valid JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"{column} is nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ValueError(f"{column} is not valid JSON ({exc})") from None


# JSONL and JSON


def read_jsonl(stream) -> Iterator[tuple[int, dict | BadRow]]:
    """One JSON object per line; a row's number is its line number."""
    for number, line in _jsonl_lines(stream):
        yield number, _json_line(line)


def _jsonl_lines(stream) -> Iterator[tuple[int, str]]:
    """(line number, line) of each line that is not blank."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    number = 0
    try:
        for number, line in enumerate(text, 1):
            if line.strip():
                yield number, line
    except UnicodeDecodeError:
        raise _not_utf8(f"on line {number + 1}") from None
    finally:
        text.detach()


def _json_line(line: str) -> dict | BadRow:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRow(f"not valid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return BadRow("not valid JSON: nested too deeply")
    except ValueError as exc:  # an integer of thousands of digits
        return BadRow(f"not valid JSON: {exc}")
    return value if isinstance(value, dict) else BadRow("each line must be a JSON object")


def read_json(stream) -> list:
    """A JSON list (of objects, one per row), read whole."""
    try:
        value = json.load(io.TextIOWrapper(stream, encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise _not_utf8("in the file") from None
    except json.JSONDecodeError as exc:
        raise rejected(f"the file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    except RecursionError:
        raise rejected("the file is not valid JSON: it is nested too deeply.") from None
    except ValueError as exc:
        raise rejected(f"the file is not valid JSON: {exc}.") from None
    if not isinstance(value, list):
        raise rejected("a JSON file must hold a list of objects (one per row); use JSONL for one object per line.")
    return value


def _is_label_studio(values: list) -> bool:
    """A list of Label Studio tasks: every object has a `data` object."""
    records = [v for v in values if isinstance(v, dict)]
    return bool(records) and all(isinstance(r.get("data"), dict) for r in records)


# PARQUET


def read_parquet(stream) -> Iterator[tuple[int, dict]]:
    """Rows a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(stream).iter_batches(batch_size=5000):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as exc:
        raise rejected(f"the file is not a readable Parquet file (after row {number}: {exc}).") from None


# A ZIPPED DATASETS FOLDER


@contextlib.contextmanager
def open_dataset(stream, split: str = "") -> Iterator[Dataset]:
    """A zip of a folder written by Dataset.save_to_disk (or DatasetDict.save_to_disk: pick `split`),
    unpacked into a temporary folder for as long as the context lasts."""
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise rejected("the file is not a readable zip archive.") from None
    packed_size = stream.seek(0, io.SEEK_END)
    with archive, tempfile.TemporaryDirectory(prefix="arbiter-import-") as tmp:
        unpack(archive, Path(tmp), unpacked_limit(packed_size))
        dataset = _load_dataset(_dataset_root(Path(tmp)), split)
        try:
            yield dataset
        finally:
            del dataset  # release the memory-mapped arrow files before the folder goes


def _dataset_items(dataset) -> Iterator[tuple[int, dict]]:
    for start in range(0, len(dataset), 5000):
        columns = dataset[start : start + 5000]
        names = list(columns)
        for offset, values in enumerate(zip(*columns.values())):
            yield start + offset + 1, dict(zip(names, values))


ZIP_RATIO = 100  # a datasets folder zips to a third or a tenth; a zip bomb to a thousandth or less
ZIP_FLOOR = 64 * MB


def unpacked_limit(packed_size: int) -> int:
    """How much a zip of packed_size bytes may unpack to: IMPORT_MAX_BYTES, and at most ZIP_RATIO times
    its size (beyond ZIP_FLOOR), so a small archive cannot fill the disk up to the limit."""
    return min(limit("IMPORT_MAX_BYTES"), max(ZIP_RATIO * packed_size, ZIP_FLOOR))


def unpack(archive: zipfile.ZipFile, folder: Path, max_bytes: int) -> None:
    """Extract every member, refusing an archive that declares, or turns out to hold, more than max_bytes."""
    members = archive.infolist()
    _check_members(members, max_bytes)
    written = 0
    for member in members:
        target = folder / member.filename
        if member.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(member) as packed, open(target, "wb") as out:
                # count what comes out: the sizes in the archive's directory are the sender's word
                while block := packed.read(MB):
                    written += len(block)
                    if written > max_bytes:
                        raise _zip_too_large(max_bytes)
                    out.write(block)
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
            raise rejected(f"the zip archive is damaged: {member.filename!r} cannot be unpacked ({exc}).") from None


def _check_members(members: list[zipfile.ZipInfo], max_bytes: int) -> None:
    if len(members) > 10_000:
        raise rejected("the zip archive holds more than 10,000 files.")
    if sum(m.file_size for m in members) > max_bytes:
        raise _zip_too_large(max_bytes)
    for member in members:
        name = member.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or re.match(r"^[A-Za-z]:", name):
            raise rejected(f"the zip archive has an unsafe path: {name!r}.")


def _zip_too_large(max_bytes: int) -> ImportRejected:
    return FileTooLarge(
        f"the zip archive unpacks to more than {max_bytes / MB:.0f} MB, the limit for one import "
        f"(the size limit, and at most {ZIP_RATIO} times the archive's size).", field="file"
    )


def _dataset_root(folder: Path) -> Path:
    for marker in ("dataset_dict.json", "state.json"):
        found = sorted(folder.rglob(marker), key=lambda p: len(p.parts))
        if found:
            return found[0].parent
    raise rejected(
        "the zip holds no Hugging Face datasets folder (no state.json or dataset_dict.json): zip the folder that "
        "Dataset.save_to_disk wrote, or upload CSV, JSONL or Parquet."
    )


def _load_dataset(root: Path, split: str):
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(root))
    except Exception as exc:  # the library raises several kinds for a broken folder
        raise rejected(f"the datasets folder cannot be loaded ({type(exc).__name__}: {exc}).") from None
    if isinstance(dataset, DatasetDict):
        splits = sorted(dataset)
        chosen = split or ("train" if "train" in dataset else (splits[0] if len(splits) == 1 else ""))
        if chosen not in dataset:
            raise ImportRejected(f"the dataset has splits {splits}; name the one to import (split).", field="split")
        dataset = dataset[chosen]
    return dataset
