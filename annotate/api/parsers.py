"""Request parsers for the API: DRF's, plus a refusal (400 naming the field) of what no endpoint can store.

JSON nested too deep, NUL characters and lone surrogates used to reach the views and end as 500s
(RecursionError, PostgreSQL refusing NUL, UTF-8 refusing surrogates). Every API view parses
through these classes (DEFAULT_PARSER_CLASSES, and the views that name their parsers).
"""
from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from annotate.core.text_input import MAX_DEPTH, BadText, check_data


class BadInput(ParseError):
    """400 with the house's error body: {"code", "detail", "field"}."""

    def __init__(self, message: str, field: str):
        super().__init__({"code": "bad_input", "detail": message, "field": field})


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise BadInput(f"JSON nested deeper than {MAX_DEPTH} levels.", "body") from None
        _refuse_bad_text(data, path_of=str)
        return data


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _refuse_bad_text(dict(data.lists()))
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        _refuse_bad_text(dict(parsed.data.lists()))
        _refuse_bad_text({name: [f.name for f in files] for name, files in parsed.files.lists()})
        return parsed


def _refuse_bad_text(data, path_of=None) -> None:
    try:
        check_data(data)
    except BadText as exc:
        field = (path_of or _form_field)(exc.field)
        raise BadInput(f"{field} {exc.problem}.", field) from None


def _form_field(path: str) -> str:
    """`name[0]` (the first of the values sent as `name`) -> `name`."""
    return path.split("[", 1)[0] or "body"
