"""`manage.py db_worker`: django-tasks-db's worker, made to outlive a lost database connection.

Upstream's loop raises on the first dropped connection and the process exits, leaving every
queued run waiting for ever. Here a lost connection costs a reconnect and a wait (1 s, doubling
up to 30 s), and a task whose outcome could not be recorded is recorded once reconnected.
(This command shadows upstream's because `annotate` comes before `django_tasks_db` in INSTALLED_APPS.)
"""
from __future__ import annotations

import logging
import os
import socket
import time

from django_tasks_db.management.commands import db_worker as upstream
from django_tasks_db.models import DBTaskResult

from annotate.core.db import DISCONNECTS, reconnect, retry_on_disconnect
from annotate.jobs.workers import start_beating

logger = logging.getLogger("django_tasks_db")
LONGEST_WAIT = 30.0


class ResilientWorker(upstream.Worker):
    def run(self) -> None:
        # the worker's own heartbeat: its queues, devices and free memory, for runs checked before they queue (annotate.runs.fit)
        stop_beating = start_beating(f"{socket.gethostname()}:{os.getpid()}", self.queue_names, busy=lambda: self.running_task)
        try:
            self._run_reconnecting()
        finally:
            stop_beating()

    def _run_reconnecting(self) -> None:
        wait = 1.0
        while self.running:
            began = time.monotonic()
            try:
                return super().run()
            except DISCONNECTS as exc:
                wait = 1.0 if time.monotonic() - began > LONGEST_WAIT else min(wait * 2, LONGEST_WAIT)
                logger.warning("worker %s lost its database connection (%s); reconnecting in %.0f s", self.worker_id, exc, wait)
                reconnect()
                time.sleep(wait)

    def run_task(self, db_task_result: DBTaskResult) -> None:
        try:
            super().run_task(db_task_result)
        except DISCONNECTS as exc:
            # upstream could not record the outcome (its retries reuse the dead connection)
            lost = exc
            reconnect()
            retry_on_disconnect(lambda: db_task_result.set_failed(lost), what=f"recording task {db_task_result.id}")


class Command(upstream.Command):
    def handle(self, **options) -> None:
        original = upstream.Worker
        setattr(upstream, "Worker", ResilientWorker)  # noqa: B010 (mypy refuses assigning to a class name; this swaps it for the command's run)
        try:
            super().handle(**options)
        finally:
            setattr(upstream, "Worker", original)  # noqa: B010
