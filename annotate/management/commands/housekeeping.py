"""`manage.py housekeeping [--every SECONDS]`: return lapsed leases' slots; fail runs whose worker died,
and enqueue again runs whose task was lost. With --every it outlives a lost database connection."""
from __future__ import annotations

import logging
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from annotate.core.db import DISCONNECTS, reconnect
from annotate.jobs.engine import fail_stale_runs, requeue_lost_runs
from annotate.jobs.workers import forget_dead_workers
from annotate.labeling.assignment import reclaim_expired_leases

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Reclaim lapsed leases and mark runs without a heartbeat as failed; with --every, keep doing it."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, help="Repeat every this many seconds.")

    def handle(self, every=None, **options):
        while True:
            try:
                self.sweep(options["verbosity"])
            except DISCONNECTS as exc:
                if not every:
                    raise
                # the next sweep does the same work again: nothing is lost by waiting for it
                log.warning("housekeeping lost its database connection (%s); retrying in %s s", exc, every)
                reconnect()
            if not every:
                return
            close_old_connections()  # give the connection back to the pool between sweeps
            time.sleep(every)

    def sweep(self, verbosity: int) -> None:
        leases, runs, requeued = reclaim_expired_leases(), fail_stale_runs(), requeue_lost_runs()
        forget_dead_workers()  # their rows are ignored once stale; this only keeps the table small
        if leases or runs or requeued or verbosity > 1:
            self.stdout.write(
                f"reclaimed {leases} lapsed leases; failed {runs} runs without a heartbeat; requeued {requeued} lost runs"
            )
