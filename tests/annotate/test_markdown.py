"""Instructions are Markdown through a sanitiser: no external images (tracking pixels)."""
from __future__ import annotations

import pytest

from annotate.core.markdown import render_markdown


@pytest.mark.parametrize("src", [
    "https://tracker.example/pixel.gif", "http://tracker.example/p.gif", "//tracker.example/p.gif", "/\\tracker.example/p.gif",
    "data:image/gif;base64,R0lGODlhAQABAAAAACw=", "/\t/tracker.example/p.gif",
])
def test_instructions_cannot_embed_external_images(src):
    html = render_markdown(f"Read this ![pixel]({src}) and <img src=\"{src}\">")
    assert "tracker" not in html and "data:" not in html
    assert "pixel" in html  # the alt text stays


def test_images_from_this_site_stay():
    html = render_markdown("![diagram](/static/annotate/diagram.png)")
    assert 'src="/static/annotate/diagram.png"' in html


def test_links_and_formatting_are_untouched():
    html = render_markdown("# Rank by *safety*\n\nSee [the guide](https://example.org/guide).")
    assert "<em>safety</em>" in html and 'href="https://example.org/guide"' in html
