"""What of a server's own detail people who are not staff see: no absolute paths, no tracebacks.

The full text stays in the database (staff see it) and in the server log (`logger.exception`).
"""
from __future__ import annotations

import re

# An absolute POSIX path of two or more parts: /srv/arbiter/artifacts/runs/7/model.safetensors
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")
ERROR_CHARS = 500


def hide_paths(value):
    """`value` (text, or JSON-like lists and dicts of it) with every absolute path cut to its last part."""
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(lambda m: f"…/{m.group(1)}", value)
    if isinstance(value, list):
        return [hide_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: hide_paths(v) for k, v in value.items()}
    return value


def short_error(text: str) -> str:
    """A run's error as people read it: the message without the traceback that follows it, paths hidden."""
    message = (text or "").split("\n\nTraceback", 1)[0].split("\nTraceback", 1)[0].strip()
    if message.startswith("Traceback"):
        message = message.strip().splitlines()[-1]
    return hide_paths(message[:ERROR_CHARS])
