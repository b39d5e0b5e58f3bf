"""Every hand-written SQL statement of annotate/ lives in annotate/core/sql.py, named, with names from the models.

One exception, named here: the PostgreSQL bulk import (campaigns/imports/copying.py) speaks the COPY
protocol over its own temporary tables inside one transaction; its statements stay beside that code.
"""
from __future__ import annotations

import re
from pathlib import Path

from django.db import connection

from annotate.core import sql
from annotate.models import Task

ANNOTATE = Path(__file__).resolve().parents[2] / "annotate"
RAW_SQL = re.compile(r"cursor\.execute|\.raw\(|RawSQL|\.extra\(|\bSELECT\b.+\bFROM\b|\bUPDATE \S+ SET\b|\bINSERT INTO\b|\bDELETE FROM\b")


def test_no_module_but_core_sql_writes_sql():
    found = [
        f"{path.relative_to(ANNOTATE)}:{number}"
        for path in ANNOTATE.rglob("*.py")
        if path not in (ANNOTATE / "core" / "sql.py", ANNOTATE / "campaigns" / "imports" / "copying.py") and "migrations" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if RAW_SQL.search(line.split("#")[0])
    ]
    assert found == []


def test_statements_take_table_and_column_names_from_the_models(monkeypatch):
    # a renamed column would reach every statement that reads it (the text is built once per vendor)
    field = Task._meta.get_field("remaining")
    monkeypatch.setattr(field, "column", "slots_left")
    monkeypatch.setattr(Task._meta, "db_table", "queue_task")
    text = sql._task_remaining_locked.__wrapped__()
    quote = connection.ops.quote_name
    assert f"SELECT {quote('slots_left')} FROM {quote('queue_task')}" in text
