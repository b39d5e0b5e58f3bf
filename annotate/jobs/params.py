"""Checking job params: each helper returns the clean value or raises InvalidParams naming the field."""
from __future__ import annotations

from typing import Literal, overload

from annotate.jobs.engine import InvalidParams
from annotate.models import ModelVersion


def integer(params: dict, name: str, default, low: int, high: int):
    """An integer in [low, high]; None only when the default is None and the param is absent or null."""
    value = params.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParams(f"{name} must be an integer from {low} to {high}.", field=name)
    return value


def number(params: dict, name: str, default: float | None, *, low: float, high: float, low_open: bool = False) -> float:
    """A number in [low, high] (or (low, high] with low_open); a None default makes the param required."""
    value = params.get(name, default)
    in_range = isinstance(value, (int, float)) and not isinstance(value, bool) and (low < value if low_open else low <= value) and value <= high
    if not in_range or not isinstance(value, (int, float)):  # the second test only tells mypy what the first checked
        raise InvalidParams(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}].", field=name)
    return float(value)


def choice(params: dict, name: str, allowed: tuple) -> str:
    """One of `allowed`; the first is the default."""
    value = params.get(name, allowed[0])
    if value not in allowed:
        raise InvalidParams(f"{name} must be one of {list(allowed)}.", field=name)
    return value


def flag(params: dict, name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InvalidParams(f"{name} must be true or false.", field=name)
    return value


def model_name(params: dict, name: str = "name") -> str | None:
    """A new model's name: absent/null (the job picks one), or 1 to 200 characters not yet in the registry.

    Checked before the run is queued: a name the registry refuses would otherwise fail only after training.
    """
    value = params.get(name)
    if value is None:
        return None
    limit = ModelVersion._meta.get_field("name").max_length
    assert limit is not None  # a CharField has one
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidParams(f"{name} must be text of 1 to {limit} characters.", field=name)
    if ModelVersion.objects.filter(name=value).exists():
        raise InvalidParams(f"{name} {value!r} is already taken.", field=name)
    return value


@overload
def text_list(params: dict, name: str, *, max_items: int, required: Literal[True], what: str = "names") -> list[str]: ...
@overload
def text_list(params: dict, name: str, *, max_items: int, required: bool = False, what: str = "names") -> list[str] | None: ...
def text_list(params: dict, name: str, *, max_items: int, required: bool = False, what: str = "names") -> list[str] | None:
    """A list of at most `max_items` strings (None when absent and not required)."""
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, list) or (required and not value) or not all(isinstance(v, str) for v in value):
        raise InvalidParams(f"{name} must be a {'non-empty ' if required else ''}list of {what}.", field=name)
    if len(value) > max_items:
        raise InvalidParams(f"{name} lists {len(value)} items; at most {max_items} are allowed.", field=name)
    return value
