"""`manage.py housekeeping [--every SECONDS]`: return lapsed leases' slots; fail runs whose worker died."""
from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from annotate.jobs.engine import fail_stale_runs
from annotate.labeling.assignment import reclaim_expired_leases


class Command(BaseCommand):
    help = "Reclaim lapsed leases and mark runs without a heartbeat as failed; with --every, keep doing it."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, help="Repeat every this many seconds.")

    def handle(self, every=None, **options):
        while True:
            leases, runs = reclaim_expired_leases(), fail_stale_runs()
            if leases or runs or options["verbosity"] > 1:
                self.stdout.write(f"reclaimed {leases} lapsed leases; failed {runs} runs without a heartbeat")
            if not every:
                return
            time.sleep(every)
