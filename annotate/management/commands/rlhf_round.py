"""`manage.py rlhf_round SLUG [--method ppo] [--params JSON] [--now]`: run one RLHF round of a campaign."""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from annotate.jobs import engine
from annotate.models import Campaign, Run


class Command(BaseCommand):
    help = "Reward model on all judgements → policy optimisation → new responses into the queue, as one run."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--method", default="ppo")
        parser.add_argument("--params", default="{}", help='JSON: {"reward": {...}, "policy": {...}, "generate": {...}}')
        parser.add_argument("--preset", default=None, help="auto (default): cpu on a worker without CUDA, else gpu; cpu: phase defaults a CPU machine can afford; "
                            "gpu: each phase's own defaults (the params still win).")
        parser.add_argument("--now", action="store_true", help="Run it in this process instead of leaving it to a worker.")

    def handle(self, slug, method, params, now=False, preset=None, **options):
        campaign = Campaign.objects.filter(slug=slug).first()
        if campaign is None:
            raise CommandError(f"No campaign with slug {slug!r}.")
        try:
            parsed = json.loads(params)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not valid JSON: {exc}") from exc
        try:
            # --now: never enqueued, so no worker can claim the run before this process does
            run = engine.start_run("round", campaign=campaign, params={**parsed, "method": method, **({"preset": preset} if preset else {})}, here=now)
        except engine.InvalidParams as exc:
            raise CommandError(f"{exc.field}: {exc.message}") from exc
        self.stdout.write(f"run {run.pk} {'running here' if now else 'queued'}")
        if now:
            engine.execute_run.call(run.pk)
            run = Run.objects.get(pk=run.pk)
            self.stdout.write(f"run {run.pk} {run.status}: {run.error or json.dumps(run.result, default=str)[:2000]}")
            if run.status != Run.Status.SUCCEEDED:
                raise CommandError(f"the round {run.status}")
