"""Model instances from hand-written SQL, for the labeling hot path (next task, submit).

Building a query with the ORM costs several times the round trip it makes (about 0.4 ms of
Python against 0.1 ms on this machine), and the two hot endpoints make a handful each. Here a
statement is written once; its rows become model instances with the same conversions the ORM
applies (JSON, datetimes on SQLite), so callers cannot tell the difference.
"""
from __future__ import annotations

from functools import cache

from django.db import connection
from django.db.models import Model
from django.db.models.expressions import Col


def select_list(model: type[Model], alias: str) -> str:
    """`alias.col1, alias.col2, ...` for every concrete field, in the order `instance` expects."""
    return _select_list(model, alias, connection.vendor)


@cache
def _select_list(model: type[Model], alias: str, vendor: str) -> str:
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)


def width(model: type[Model]) -> int:
    """How many columns `select_list(model, ...)` yields (to split a joined row)."""
    return len(model._meta.concrete_fields)


def instance(model: type[Model], values) -> Model:
    """A model instance from the values of `select_list(model, ...)`, converted as the ORM would."""
    converters = _converters(model, connection.vendor)
    converted = [value if value is None else _convert(value, field_converters) for value, field_converters in zip(values, converters)]
    return model.from_db(connection.alias, [f.attname for f in model._meta.concrete_fields], converted)


def field_value(model: type[Model], name: str, value):
    """One column's value, converted as the ORM would convert `model.name`."""
    fields = model._meta.concrete_fields
    index = next(i for i, f in enumerate(fields) if f.attname == name)
    return value if value is None else _convert(value, _converters(model, connection.vendor)[index])


def _convert(value, field_converters):
    for converter, expression in field_converters:
        value = converter(value, expression, connection)
    return value


@cache
def _converters(model: type[Model], vendor: str) -> list[list]:
    result = []
    for field in model._meta.concrete_fields:
        expression = Col(model._meta.db_table, field)
        found = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
        result.append([(converter, expression) for converter in found])
    return result


def insert(obj: Model) -> Model:
    """INSERT the unsaved `obj` in one statement (defaults and auto_now_add applied as `save()` would); sets its pk."""
    meta = obj._meta
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field]
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)})"
        f" VALUES ({', '.join(['%s'] * len(fields))})"
    )
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:
            cursor.execute(sql + f" RETURNING {quote(meta.pk.column)}", values)
            obj.pk = cursor.fetchone()[0]
        else:
            cursor.execute(sql, values)
            obj.pk = cursor.lastrowid
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


def for_update() -> str:
    """The row-lock clause where the database has one (SQLite locks the whole database on write)."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""
