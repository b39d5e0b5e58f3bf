"""Background jobs: a Run row for people, a django-tasks task for the worker.

    run = start_run("generate", campaign=c, params={...}, user=u)   # validates, creates, enqueues after commit

Kinds register a params validator and a handler (`register`). Workers are `manage.py
db_worker` processes (django-tasks-db) on any machine that reaches the database; the
kind's queue routes work (set ML_QUEUE=gpu and run `db_worker --queue-name gpu` on a GPU box).
While a run works, a heartbeat thread stamps it; `fail_stale_runs` marks runs whose worker
died as failed instead of leaving them "running" forever (their task rows too, and their partial
files where nothing can resume or use them), and `requeue_lost_runs` enqueues again a queued run
whose task was lost before any work began. A dropped database connection costs the worker a
reconnect (`annotate.core.db.retry_on_disconnect`), not the run. Cancelling sets a flag that the
handler sees through `ctx.should_stop()` between steps.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django_tasks import task
from django_tasks.base import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from annotate.core.db import DISCONNECTS, reconnect, retry_on_disconnect
from annotate.core.errors import DomainError
from annotate.models import Campaign, ModelVersion, Run, RunMetric

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
# Checks every run passes after its kind's validator, before it is created: (kind, queue, campaign, clean params) -> None or
# InvalidParams. Kinds above this layer add theirs (annotate.runs.fit: does the run fit a live worker of its queue?).
ADMISSION_CHECKS: list[Callable[[str, str, Campaign | None, dict], None]] = []


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
    for check in ADMISSION_CHECKS:
        check(kind, spec.queue, campaign, clean)
    run = Run.objects.create(kind=kind, campaign=campaign, params=clean, created_by=user, queue_name=spec.queue)
    if not here:
        # robust: a connection lost here must not fail the committed request; requeue_lost_runs retries
        transaction.on_commit(lambda: _enqueue(run.pk, spec.queue), robust=True)
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
    """Mark running runs without a recent heartbeat (their worker died) as failed, close the task
    rows their dead workers left RUNNING, and delete the partial files nothing can use."""
    now = now or timezone.now()
    stale = list(Run.objects.filter(status=Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER).values_list("pk", flat=True))
    failed = Run.objects.filter(pk__in=stale, status=Status.RUNNING).update(
        status=Status.FAILED, finished_at=now, error="The worker stopped answering (no heartbeat for over a minute); the run was abandoned."
    )
    _close_orphaned_task_rows(now)
    for run in Run.objects.filter(pk__in=stale, status=Status.FAILED):
        _remove_partial_files(run)
    return failed


def _close_orphaned_task_rows(now) -> int:
    """A task row still RUNNING a minute after its run stopped running (or never started) lost its
    worker: mark it failed so the queue's records tell the truth."""
    live = Run.objects.filter(status=Status.RUNNING).exclude(task_result_id="").values_list("task_result_id", flat=True)
    return (
        DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING, started_at__lt=now - STALE_AFTER, task_path=TASK_PATH)
        .exclude(id__in=list(live))
        .update(status=TaskResultStatus.FAILED, finished_at=now, exception_class_path=f"{__name__}.WorkerLost",
                traceback="The worker stopped before recording how the task ended.")
    )


def _remove_partial_files(run: Run) -> None:
    """Delete ARTIFACTS_DIR/runs/<id>/ of a dead run, unless a PPO run can resume from it or a
    registered model points into it."""
    folder = (Path(settings.ARTIFACTS_DIR) / "runs" / str(run.pk)).resolve()
    if run.kind == "ppo" or not folder.is_dir():
        return
    if any(_inside(path, folder) for path in ModelVersion.objects.exclude(checkpoint_path="").values_list("checkpoint_path", flat=True)):
        return
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("run %s: removed the partial files in %s", run.pk, folder)


def _inside(path: str, folder: Path) -> bool:
    full = Path(path) if Path(path).is_absolute() else Path(settings.ARTIFACTS_DIR) / path
    return full.resolve().is_relative_to(folder)


def requeue_lost_runs(now=None) -> int:
    """Enqueue again the queued runs whose task is gone (never enqueued because the connection
    dropped after the commit, or ended or abandoned before the run was claimed): no work began."""
    now = now or timezone.now()
    queued = Run.objects.filter(status=Status.QUEUED, created_at__lt=now - STALE_AFTER)
    waiting = DBTaskResult.objects.filter(status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING]).values_list("id", flat=True)
    waiting_ids = {str(pk) for pk in waiting}
    lost = [run for run in queued.only("pk", "queue_name", "task_result_id") if run.task_result_id not in waiting_ids]
    for run in lost:
        logger.warning("run %s was queued but its task %r is gone; enqueueing it again", run.pk, run.task_result_id)
        _enqueue(run.pk, run.queue_name)
    return len(lost)


class RunContext:
    """What a handler may do to its run: report progress, log, record metrics, check for cancel."""

    def __init__(self, run: Run):
        self.run = run
        self.params = run.params
        self._checked_at = 0.0

    @property
    def campaign(self) -> Campaign:
        """The run's campaign, for the kinds that work on one (a run of such a kind without one is a bug)."""
        if self.run.campaign is None:
            raise ValueError(f"run {self.run.pk} ({self.run.kind}) has no campaign")
        return self.run.campaign

    def progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        retry_on_disconnect(lambda: Run.objects.filter(pk=self.run.pk).update(progress=fraction, progress_message=message[:300]))

    def log(self, line: str) -> None:
        logger.info("run %s: %s", self.run.pk, line)
        stamped = f"{timezone.now():%H:%M:%S} {line}"

        def append():
            run = Run.objects.only("log_tail").get(pk=self.run.pk)
            lines = (run.log_tail.splitlines() + [stamped])[-LOG_LINES:]
            Run.objects.filter(pk=self.run.pk).update(log_tail="\n".join(lines))

        retry_on_disconnect(append)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        rows = [RunMetric(run_id=self.run.pk, step=step, name=name, value=float(value)) for name, value in values.items() if value is not None]
        # A retry after a connection lost at the commit may store a point twice; losing an
        # hour of training to one dropped connection would be worse.
        retry_on_disconnect(lambda: RunMetric.objects.bulk_create(rows))

    def artifact(self, name: str, path: str | Path) -> None:
        self.run.artifacts[name] = str(path)
        retry_on_disconnect(lambda: Run.objects.filter(pk=self.run.pk).update(artifacts=self.run.artifacts))

    def should_stop(self) -> bool:
        """True once someone asked to cancel (read from the database at most once a second)."""
        if time.monotonic() - self._checked_at >= 1.0:
            self._checked_at = time.monotonic()
            self.run.cancel_requested = bool(
                retry_on_disconnect(lambda: Run.objects.filter(pk=self.run.pk).values_list("cancel_requested", flat=True).first())
            )
        return bool(self.run.cancel_requested)

    def check_cancelled(self) -> None:
        if self.should_stop():
            raise RunCancelled()


class WorkerLost(Exception):
    """Recorded on a task row whose worker died while running it."""


@task(queue_name="default")
def execute_run(run_id: int) -> str:
    """The worker's side of a run: claim it, beat, call the kind's handler, record how it ended."""
    now = timezone.now()
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def claim() -> bool:
        claimed = Run.objects.filter(pk=run_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker
        )
        # after a retry the first attempt may have committed before the connection dropped
        return bool(claimed) or Run.objects.filter(pk=run_id, status=Status.RUNNING, worker=worker, started_at=now).exists()

    if not retry_on_disconnect(claim, what=f"claiming run {run_id}"):
        return "not queued (cancelled or already taken)"
    run = retry_on_disconnect(lambda: Run.objects.get(pk=run_id))
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
    return retry_on_disconnect(lambda: Run.objects.get(pk=run_id).status)


TASK_PATH = f"{__name__}.execute_run"


def _finish(run_id: int, status: str, **fields) -> None:
    retry_on_disconnect(
        lambda: Run.objects.filter(pk=run_id, status=Status.RUNNING).update(status=status, finished_at=timezone.now(), **fields),
        what=f"recording how run {run_id} ended",
    )


def _start_heartbeat(run_id: int) -> Callable[[], None]:
    stop = threading.Event()

    def beat():
        try:
            while not stop.wait(HEARTBEAT_SECONDS):
                try:
                    Run.objects.filter(pk=run_id, status=Status.RUNNING).update(heartbeat_at=timezone.now())
                except DISCONNECTS as exc:  # a lost connection must not stop the beat: the run is alive
                    logger.warning("run %s: heartbeat lost its database connection (%s); reconnecting", run_id, exc)
                    reconnect()
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-run-{run_id}", daemon=True)
    thread.start()

    def stop_beating():
        stop.set()
        thread.join(timeout=HEARTBEAT_SECONDS + 5)

    return stop_beating


def phase_times(run: Run) -> list[tuple[str, float]]:
    """(phase, seconds) of each phase finished so far, in the order they finished: the `time/<phase>_s` metrics."""
    rows = run.metrics.filter(name__startswith="time/", name__endswith="_s").order_by("id").values_list("name", "value")
    return [(name.removeprefix("time/").removesuffix("_s"), value) for name, value in rows]


def metric_series(run: Run) -> dict[str, list[tuple[int, float]]]:
    """All metric points of a run, by name, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in run.metrics.order_by("name", "step", "id").values_list("name", "step", "value"):
        series.setdefault(name, []).append((step, value))
    return series


