"""A refused request is logged in one line: no traceback for a 403 (issue 13), the traceback kept for real faults."""
import logging
import sys

from django.core.exceptions import PermissionDenied

from config.log_filters import RefusalWithoutTraceback


def record_with(exc: Exception) -> logging.LogRecord:
    try:
        raise exc
    except Exception:
        return logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Forbidden: /c/x/", None, sys.exc_info())


def test_a_403_keeps_its_line_and_loses_its_traceback():
    record = record_with(PermissionDenied("not yours"))
    assert RefusalWithoutTraceback().filter(record)
    assert record.exc_info is None
    assert logging.Formatter().format(record) == "Forbidden: /c/x/"


def test_a_fault_keeps_its_traceback():
    record = record_with(ValueError("broken"))
    assert RefusalWithoutTraceback().filter(record)
    assert "ValueError: broken" in logging.Formatter().format(record)
