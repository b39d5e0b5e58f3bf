"""Hostile text from clients: NUL bytes, lone surrogates, deep nesting and non-ASCII digits.

PostgreSQL refuses NUL in text, UTF-8 cannot encode a lone surrogate, Python's parsers recurse
(a body nested 100k deep raises RecursionError) and `str.isdigit()` is true for "²", which `int()`
refuses. Each of these used to surface as a 500; the edges use these checks to answer 400 naming
the field instead.
"""
from __future__ import annotations

import re

# Deep enough for any payload of ours (a ranking is 2 levels, an import row 4), shallow enough
# that nothing downstream (serialisers, json.dumps, psycopg) recurses far.
MAX_DEPTH = 32
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_ASCII_DIGITS = re.compile(r"[0-9]{1,30}")  # int() refuses over 4,300 digits


class BadText(ValueError):
    """A value that no endpoint accepts; `field` is where it was found (e.g. `ranking[0][1]`)."""

    def __init__(self, problem: str, field: str):
        super().__init__(f"{field} {problem}.")
        self.problem = problem
        self.field = field

    @property
    def message(self) -> str:
        return str(self)


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    match = _BAD_CHARACTER.search(text)
    if match is None:
        return None
    return "contains a NUL character" if match.group() == "\x00" else "contains a lone surrogate (not valid Unicode)"


def check_data(data, field: str = "") -> None:
    """Walk parsed JSON without recursion (so depth cannot blow the stack); raise BadText at the first bad value.

    Paths are built only for containers and on failure: a body of 170k ids is one pass of type checks.
    """
    if isinstance(data, str):
        _check_text(data, field)
    if not isinstance(data, (dict, list)):
        return
    stack = [(data, field, 0)]
    while stack:
        container, path, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise BadText(f"is nested deeper than {MAX_DEPTH} levels", path or "body")
        if isinstance(container, dict):
            for key, item in container.items():
                _check_text(key, path or "body")
                if isinstance(item, str):
                    if _BAD_CHARACTER.search(item):
                        _check_text(item, f"{path}.{key}" if path else str(key))
                elif isinstance(item, (dict, list)):
                    stack.append((item, f"{path}.{key}" if path else str(key), depth + 1))
        else:
            for i, item in enumerate(container):
                if isinstance(item, str):
                    if _BAD_CHARACTER.search(item):
                        _check_text(item, f"{path}[{i}]")
                elif isinstance(item, (dict, list)):
                    stack.append((item, f"{path}[{i}]", depth + 1))


def ascii_int(text) -> int | None:
    """The integer written in ASCII digits, or None (also for "²" and "٣", which isdigit() accepts)."""
    if isinstance(text, str) and _ASCII_DIGITS.fullmatch(text):
        return int(text)
    return None


def _check_text(text: str, path: str) -> None:
    problem = text_problem(text)
    if problem:
        raise BadText(problem, path or "body")
