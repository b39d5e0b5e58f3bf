import json

from django import template

from annotate.core.markdown import render_markdown

register = template.Library()


@register.filter
def get_item(mapping, key):
    """mapping[key] in a template (None when absent)."""
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def pretty_json(value) -> str:
    """The value as indented JSON (autoescaped by the template like any string)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def is_scalar(value) -> bool:
    """True for what a table cell shows as is (not a list or a mapping)."""
    return not isinstance(value, (dict, list, tuple))


@register.filter
def model_text(text: str, as_markdown: bool = True):
    """Prompt or response text: sanitised Markdown (nh3 has the last word), or the plain text, escaped by the template."""
    return render_markdown(text) if as_markdown else text


@register.filter
def readable(value) -> str:
    """A scalar as a person reads it in a table: true/false/null as in JSON, numbers and text as they are."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)
