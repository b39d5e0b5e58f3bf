"""Background jobs: a Run row for people, a django-tasks task for the worker.

    run = start_run("generate", campaign=c, params={...}, user=u)   # validates, creates, enqueues after commit

Kinds register a params validator and a handler (`register`). Workers are `manage.py
db_worker` processes (django-tasks-db) on any machine that reaches the database; the
kind's queue routes work (set ML_QUEUE=gpu and run `db_worker --queue-name gpu` on a GPU box).
While a run works, a heartbeat thread stamps it; `fail_stale_runs` marks runs whose worker
died as failed instead of leaving them "running" forever. Cancelling sets a flag that the
handler sees through `ctx.should_stop()` between steps.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django_tasks import task

from annotate.core.errors import DomainError
from annotate.models import Campaign, Run, RunMetric

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10
STALE_AFTER = timedelta(seconds=60)
LOG_LINES = 200
Status = Run.Status


class InvalidParams(DomainError):
    code = "invalid_params"


class RunCancelled(Exception):
    """Raised by a handler (through ctx.check_cancelled) when its run was cancelled."""


class RunFailed(Exception):
    """A handler's clear, user-facing failure (bad checkpoint, too few pairs, ...)."""


@dataclass
class JobKind:
    validate: Callable[[Campaign | None, dict], dict]
    handle: Callable[[RunContext], dict]
    queue: str


KINDS: dict[str, JobKind] = {}


def register(kind: str, validate, handle, *, ml: bool = True) -> None:
    """Make a kind of run startable. ML kinds go to settings.ML_QUEUE."""
    KINDS[kind] = JobKind(validate, handle, settings.ML_QUEUE if ml else "default")


def start_run(kind: str, *, campaign: Campaign | None, params: dict, user=None, here: bool = False) -> Run:
    """Validate the params, create the run and enqueue it once the transaction commits.

    here=True: no worker is told; the caller runs it in its own process with `execute_run.call(run.pk)`.
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise InvalidParams(f"unknown kind {kind!r}; allowed: {sorted(KINDS)}.", field="kind")
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object.", field="params")
    clean = spec.validate(campaign, params)
    run = Run.objects.create(kind=kind, campaign=campaign, params=clean, created_by=user, queue_name=spec.queue)
    if not here:
        transaction.on_commit(lambda: _enqueue(run.pk, spec.queue))
    return run


def _enqueue(run_id: int, queue: str) -> None:
    result = execute_run.using(queue_name=queue).enqueue(run_id)
    Run.objects.filter(pk=run_id).update(task_result_id=str(result.id))


def request_cancel(run: Run) -> Run:
    """A queued run is cancelled at once; a running one stops at its next step."""
    now = timezone.now()
    Run.objects.filter(pk=run.pk, status=Status.QUEUED).update(status=Status.CANCELLED, finished_at=now, cancel_requested=True)
    Run.objects.filter(pk=run.pk, status=Status.RUNNING).update(cancel_requested=True)
    run.refresh_from_db()
    return run


def fail_stale_runs(now=None) -> int:
    """Mark running runs without a recent heartbeat (their worker died) as failed."""
    now = now or timezone.now()
    return Run.objects.filter(status=Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER).update(
        status=Status.FAILED, finished_at=now, error="The worker stopped answering (no heartbeat for over a minute); the run was abandoned."
    )


class RunContext:
    """What a handler may do to its run: report progress, log, record metrics, check for cancel."""

    def __init__(self, run: Run):
        self.run = run
        self.params = run.params
        self._checked_at = 0.0

    def progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        Run.objects.filter(pk=self.run.pk).update(progress=fraction, progress_message=message[:300])

    def log(self, line: str) -> None:
        logger.info("run %s: %s", self.run.pk, line)
        run = Run.objects.only("log_tail").get(pk=self.run.pk)
        lines = (run.log_tail.splitlines() + [f"{timezone.now():%H:%M:%S} {line}"])[-LOG_LINES:]
        Run.objects.filter(pk=self.run.pk).update(log_tail="\n".join(lines))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        RunMetric.objects.bulk_create(
            RunMetric(run_id=self.run.pk, step=step, name=name, value=float(value)) for name, value in values.items() if value is not None
        )

    def artifact(self, name: str, path: str) -> None:
        self.run.artifacts[name] = str(path)
        Run.objects.filter(pk=self.run.pk).update(artifacts=self.run.artifacts)

    def should_stop(self) -> bool:
        """True once someone asked to cancel (read from the database at most once a second)."""
        if time.monotonic() - self._checked_at >= 1.0:
            self._checked_at = time.monotonic()
            self.run.cancel_requested = Run.objects.filter(pk=self.run.pk).values_list("cancel_requested", flat=True).first()
        return bool(self.run.cancel_requested)

    def check_cancelled(self) -> None:
        if self.should_stop():
            raise RunCancelled()


@task(queue_name="default")
def execute_run(run_id: int) -> str:
    """The worker's side of a run: claim it, beat, call the kind's handler, record how it ended."""
    now = timezone.now()
    claimed = Run.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now, heartbeat_at=now, worker=f"{socket.gethostname()}:{os.getpid()}"
    )
    if not claimed:
        return "not queued (cancelled or already taken)"
    run = Run.objects.get(pk=run_id)
    stop_beating = _start_heartbeat(run_id)
    try:
        result = KINDS[run.kind].handle(RunContext(run))
        _finish(run_id, Status.SUCCEEDED, progress=1.0, result=result or {})
    except RunCancelled:
        _finish(run_id, Status.CANCELLED)
    except RunFailed as exc:
        _finish(run_id, Status.FAILED, error=str(exc))
    except Exception as exc:  # anything else: keep the traceback for the run page
        logger.exception("run %s failed", run_id)
        _finish(run_id, Status.FAILED, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()[-4000:]}")
    finally:
        stop_beating()
    return Run.objects.get(pk=run_id).status


def _finish(run_id: int, status: str, **fields) -> None:
    Run.objects.filter(pk=run_id, status=Status.RUNNING).update(status=status, finished_at=timezone.now(), **fields)


def _start_heartbeat(run_id: int) -> Callable[[], None]:
    stop = threading.Event()

    def beat():
        try:
            while not stop.wait(HEARTBEAT_SECONDS):
                Run.objects.filter(pk=run_id, status=Status.RUNNING).update(heartbeat_at=timezone.now())
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-run-{run_id}", daemon=True)
    thread.start()

    def stop_beating():
        stop.set()
        thread.join(timeout=HEARTBEAT_SECONDS + 5)

    return stop_beating


def metric_series(run: Run) -> dict[str, list[tuple[int, float]]]:
    """All metric points of a run, by name, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in run.metrics.order_by("name", "step", "id").values_list("name", "step", "value"):
        series.setdefault(name, []).append((step, value))
    return series


