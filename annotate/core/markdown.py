"""Markdown for campaign instructions, always through a sanitiser (nh3).

Images may only come from this site: an external `src` (a tracking pixel that learns who reads the
instructions, and when) is removed, leaving the image's alt text.
"""
from __future__ import annotations

import re

import markdown as md
import nh3
from django.utils.safestring import SafeString, mark_safe

# A path on this site: one leading slash and plain URL characters. Not "//host" nor "/\host"
# (browsers read both as another host) nor whitespace (browsers drop tabs and newlines in URLs).
_SAME_ORIGIN_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9_.~%/?=&+\-]*")


def render_markdown(text: str) -> SafeString:
    html = md.markdown(text or "", extensions=["extra", "sane_lists"])
    return mark_safe(nh3.clean(html, attribute_filter=_same_origin_images))


def _same_origin_images(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute == "src" and not _SAME_ORIGIN_PATH.fullmatch(value):
        return None
    return value
