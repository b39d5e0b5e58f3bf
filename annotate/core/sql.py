"""Every hand-written SQL statement of annotate/, and model instances from its rows.

The hand-written statements serve the labeling hot path (access, next task, submit, task content)
and the one aggregate the ORM cannot express (a median on PostgreSQL).

Building a query with the ORM costs several times the round trip it makes (about 0.4 ms of
Python against 0.1 ms on this machine), and the two hot endpoints make a handful each. Here a
statement is written once; its rows become model instances with the same conversions the ORM
applies (JSON, datetimes on SQLite), so callers cannot tell the difference.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cache, wraps
from types import SimpleNamespace
from typing import TypeVar

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Model
from django.db.models.expressions import Col

from annotate.models import ApiToken, Assignment, Campaign, Judgement, Membership, Prompt, Response, Run, Task, TaskResponse

M = TypeVar("M", bound=Model)


def select_list(model: type[Model], alias: str) -> str:
    """`alias.col1, alias.col2, ...` for every concrete field, in the order `instance` expects."""
    return _select_list(model, alias, connection.vendor)


@cache
def _select_list(model: type[Model], alias: str, vendor: str) -> str:
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(_column(field))}" for field in model._meta.concrete_fields)


def _column(field) -> str:
    """A concrete field's column name (only non-concrete fields have none)."""
    assert field.column is not None, f"{field} has no column"
    return field.column


def width(model: type[Model]) -> int:
    """How many columns `select_list(model, ...)` yields (to split a joined row)."""
    return len(model._meta.concrete_fields)


def instance(model: type[M], values) -> M:
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


def insert(obj: M) -> M:
    """INSERT the unsaved `obj` in one statement (defaults and auto_now_add applied as `save()` would); sets its pk."""
    meta = obj._meta
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field]
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(_column(f)) for f in fields)})"
        f" VALUES ({', '.join(['%s'] * len(fields))})"
    )
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:
            cursor.execute(sql + f" RETURNING {quote(_column(meta.pk))}", values)
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


# NAMED STATEMENTS
# Every hand-written statement of annotate/. Table and column names come from the models' `_meta`
# and status values from their choices; each text is built once per database vendor, at first use
# (the models must be loaded), so the hot path pays a dictionary lookup for it, not string building.


def _per_vendor(build: Callable[[], str]) -> Callable[[], str]:
    """The statement `build` returns, built once per database vendor."""
    built = cache(lambda vendor: build())

    @wraps(build)
    def statement() -> str:
        return built(connection.vendor)

    return statement


def _names(model: type[Model]) -> SimpleNamespace:
    """Quoted names of `model`'s table (`.table`) and columns (by field name and attname: `.campaign`, `.campaign_id`; `.pk`)."""
    quote = connection.ops.quote_name
    columns = {"pk": quote(_column(model._meta.pk))}
    for field in model._meta.concrete_fields:
        columns[field.name] = columns[field.attname] = quote(_column(field))
    return SimpleNamespace(table=quote(model._meta.db_table), **columns)


def _fetchone(statement: str, params) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def _fetchall(statement: str, params) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


def _execute(statement: str, params) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


# ACCESS (every request)


@_per_vendor
def _membership_and_campaign() -> str:
    c, m = _names(Campaign), _names(Membership)
    return (
        f"SELECT m.{m.role}, m.{m.is_paused}, {select_list(Campaign, 'c')} FROM {c.table} c"
        f" JOIN {m.table} m ON m.{m.campaign} = c.{c.id} WHERE c.{c.slug} = %s AND m.{m.user} = %s"
    )


def membership_and_campaign(slug: str, user_id: int) -> tuple | None:
    """(role, is_paused, *campaign columns) of the user's membership in the campaign `slug`; None if not a member."""
    return _fetchone(_membership_and_campaign(), [slug, user_id])


@_per_vendor
def _role_task_and_campaign() -> str:
    t, c, m = _names(Task), _names(Campaign), _names(Membership)
    return (
        f"SELECT m.{m.role}, {select_list(Task, 't')}, {select_list(Campaign, 'c')} FROM {t.table} t"
        f" JOIN {c.table} c ON c.{c.id} = t.{t.campaign}"
        f" LEFT JOIN {m.table} m ON m.{m.campaign} = c.{c.id} AND m.{m.user} = %s WHERE t.{t.id} = %s"
    )


def role_task_and_campaign(user_id: int, task_id: int) -> tuple | None:
    """(the user's role or None, *task columns, *campaign columns) of the task; None if there is no such task."""
    return _fetchone(_role_task_and_campaign(), [user_id, task_id])


@_per_vendor
def _user_of_token() -> str:
    User = get_user_model()
    t, u = _names(ApiToken), _names(User)
    return f"SELECT {select_list(User, 'u')} FROM {t.table} t JOIN {u.table} u ON u.{u.pk} = t.{t.user} WHERE t.{t.digest} = %s"


def user_of_token(digest: str) -> tuple | None:
    """The user columns (`select_list(User, ...)`) of the owner of the API token with this SHA-256 `digest`; None if unknown."""
    return _fetchone(_user_of_token(), [digest])


# NEXT TASK (assignment)


@_per_vendor
def _current_lease() -> str:
    a, t = _names(Assignment), _names(Task)
    return (
        f"SELECT {select_list(Assignment, 'a')}, {select_list(Task, 't')}"
        f" FROM {a.table} a JOIN {t.table} t ON t.{t.id} = a.{a.task}"
        f" WHERE a.{a.labeler} = %s AND a.{a.campaign} = %s AND a.{a.state} = %s AND a.{a.leased_until} > %s"
        f" ORDER BY a.{a.leased_at} LIMIT 1"
    )


def current_lease(labeler_id: int, campaign_id: int, now) -> tuple | None:
    """(*assignment columns, *task columns) of the labeler's oldest open lease in the campaign still valid at `now`."""
    return _fetchone(_current_lease(), [labeler_id, campaign_id, Assignment.State.OPEN, connection.ops.adapt_datetimefield_value(now)])


# The task fields `lease_free_task` returns (after the new assignment's id), by attname.
LEASED_TASK_FIELDS = ("id", "prompt_id", "priority", "is_gold", "judgements_needed", "judgements_received", "remaining", "created_at")


@_per_vendor
def _lease_free_task() -> str:
    t, a = _names(Task), _names(Assignment)
    returned = ", ".join(f"t.{getattr(t, name)}" for name in LEASED_TASK_FIELDS)
    return f"""
WITH picked AS (
    SELECT t.{t.id} FROM {t.table} t
    WHERE t.{t.campaign} = %(campaign)s AND t.{t.remaining} > 0
      AND NOT EXISTS (SELECT 1 FROM {a.table} a WHERE a.{a.task} = t.{t.id} AND a.{a.labeler} = %(labeler)s)
    ORDER BY t.{t.priority} DESC, t.{t.id}
    LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
), taken AS (
    UPDATE {t.table} t SET {t.remaining} = t.{t.remaining} - 1 FROM picked WHERE t.{t.id} = picked.{t.id}
    RETURNING {returned}
), leased AS (
    INSERT INTO {a.table} ({a.task}, {a.labeler}, {a.campaign}, {a.state}, {a.leased_at}, {a.leased_until})
    SELECT taken.{t.id}, %(labeler)s, %(campaign)s, '{Assignment.State.OPEN.value}', %(now)s, %(until)s FROM taken
    RETURNING {a.id}
)
SELECT leased.{a.id}, taken.* FROM leased, taken
"""


def lease_free_task(labeler_id: int, campaign_id: int, now, until) -> tuple | None:
    """PostgreSQL only: pick the next free task, take a slot and lease it, in one statement (one round trip
    instead of five). (new assignment id, *LEASED_TASK_FIELDS) or None when no task is free."""
    return _fetchone(_lease_free_task(), {"campaign": campaign_id, "labeler": labeler_id, "now": now, "until": until})


# SUBMIT (judgements)


@_per_vendor
def _task_remaining_locked() -> str:
    t = _names(Task)
    return f"SELECT {t.remaining} FROM {t.table} WHERE {t.id} = %s" + for_update()


def task_remaining_locked(task_id: int) -> int:
    """The task's free slots, its row locked (where the database has row locks) until the transaction ends."""
    row = _fetchone(_task_remaining_locked(), [task_id])
    if row is None:
        raise Task.DoesNotExist(f"Task {task_id} does not exist.")
    return row[0]


@_per_vendor
def _assignment_locked() -> str:
    a = _names(Assignment)
    return f"SELECT {a.id}, {a.state} FROM {a.table} WHERE {a.task} = %s AND {a.labeler} = %s" + for_update()


def assignment_locked(task_id: int, labeler_id: int) -> tuple[int, str] | None:
    """(id, state) of the labeler's assignment of the task, its row locked; None if there is none."""
    return _fetchone(_assignment_locked(), [task_id, labeler_id])


@_per_vendor
def _mark_submitted() -> str:
    a = _names(Assignment)
    return f"UPDATE {a.table} SET {a.state} = %s, {a.finished_at} = %s WHERE {a.id} = %s"


def mark_submitted(assignment_id: int, now) -> None:
    _execute(_mark_submitted(), [Assignment.State.SUBMITTED, connection.ops.adapt_datetimefield_value(now), assignment_id])


@_per_vendor
def _count_judgement() -> str:
    t = _names(Task)
    return f"UPDATE {t.table} SET {t.judgements_received} = {t.judgements_received} + 1 WHERE {t.id} = %s"


def count_judgement(task_id: int) -> None:
    """One more judgement received, in a slot the lease already held."""
    _execute(_count_judgement(), [task_id])


@_per_vendor
def _take_slot_and_count_judgement() -> str:
    t = _names(Task)
    return (
        f"UPDATE {t.table} SET {t.remaining} = {t.remaining} - 1,"
        f" {t.judgements_received} = {t.judgements_received} + 1 WHERE {t.id} = %s"
    )


def take_slot_and_count_judgement(task_id: int) -> None:
    """One more judgement received, in a free slot it takes."""
    _execute(_take_slot_and_count_judgement(), [task_id])


# WHAT A TASK SHOWS


@_per_vendor
def _task_response_ids() -> str:
    s = _names(TaskResponse)
    return f"SELECT {s.response} FROM {s.table} WHERE {s.task} = %s ORDER BY {s.position}"


def task_response_ids(task_id: int) -> list[int]:
    """The ids of the task's responses in display order."""
    return [row[0] for row in _fetchall(_task_response_ids(), [task_id])]


@_per_vendor
def _task_content() -> str:
    s, r, t, p = _names(TaskResponse), _names(Response), _names(Task), _names(Prompt)
    return (
        f"SELECT r.{r.id}, r.{r.text}, p.{p.id}, p.{p.messages}, p.{p.context} FROM {s.table} s"
        f" JOIN {r.table} r ON r.{r.id} = s.{s.response} JOIN {t.table} t ON t.{t.id} = s.{s.task}"
        f" JOIN {p.table} p ON p.{p.id} = t.{t.prompt}"
        f" WHERE s.{s.task} = %s ORDER BY s.{s.position}"
    )


def task_content(task_id: int) -> list[tuple]:
    """(response id, response text, prompt id, prompt messages, prompt context) per response, in display order."""
    return _fetchall(_task_content(), [task_id])


# STATISTICS


@_per_vendor
def _judgements_and_median_seconds() -> str:
    # Seconds a judgement took: the time the labeler's page reported, else from lease to submit.
    j, t, a = _names(Judgement), _names(Task), _names(Assignment)
    return f"""
SELECT j.{j.labeler}, count(*), percentile_cont(0.5) WITHIN GROUP (
    ORDER BY coalesce(j.{j.time_spent_ms} / 1000.0, greatest(extract(epoch FROM j.{j.created_at} - a.{a.leased_at}), 0)))
FROM {j.table} j JOIN {t.table} t ON t.{t.id} = j.{j.task} JOIN {a.table} a ON a.{a.id} = j.{j.assignment}
WHERE t.{t.campaign} = %s AND j.{j.labeler} = ANY(%s)
GROUP BY j.{j.labeler}
"""


def judgements_and_median_seconds(campaign_id: int, labeler_ids: list[int]) -> list[tuple]:
    """PostgreSQL only: (labeler id, judgements, median seconds per judgement or None) per labeler with judgements."""
    return _fetchall(_judgements_and_median_seconds(), [campaign_id, labeler_ids])


# RUN PROGRESS through a connection of its own (an import's transaction hides its own writes until the end)


def set_run_progress(cursor, run_id: int, fraction: float, message: str) -> None:
    r = _names(Run)
    cursor.execute(f"UPDATE {r.table} SET {r.progress} = %s, {r.progress_message} = %s WHERE {r.pk} = %s", [fraction, message, run_id])
