"""`manage.py reclaim_leases [--every SECONDS]`: return lapsed leases' slots to the pool."""
from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from annotate.assignment import reclaim_expired_leases


class Command(BaseCommand):
    help = "Mark lapsed leases expired and return their slots; with --every, keep doing it."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, help="Repeat every this many seconds.")

    def handle(self, every=None, **options):
        while True:
            count = reclaim_expired_leases()
            if count or options["verbosity"] > 1:
                self.stdout.write(f"reclaimed {count} lapsed leases")
            if not every:
                return
            time.sleep(every)
