"""`manage.py load_demo`: the demo campaigns (from annotate/fixtures/demo.json), accounts, and simulated judgements. Idempotent.

So that "Train reward model", a round and an export work at once, simulated labelers (accounts
named `simulated-*`, first name "Simulated labeler") judge part of each new campaign: one
judgement per pairwise task and two per ranking task, leaving slots open for alice and bob. A
simulated labeler prefers the longer response most of the time (a seeded coin), so a reward model
has a signal to find. Their judgements are ordinary rows: pause or deactivate them to leave them out.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.labeling import assignment, judgements
from annotate.labeling.task_content import task_content
from annotate.models import Campaign, Membership

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "demo.json"
ACCOUNTS = [("admin", "admin"), ("alice", "labeler"), ("bob", "labeler"), ("rita", "researcher")]
DEMO_PASSWORD = "arbiter-demo"
SIMULATED = ["simulated-1", "simulated-2"]
AGREES_WITH_LENGTH = 0.85
"""How often a simulated labeler prefers the longer of two responses."""


class Command(BaseCommand):
    help = "Load the demo campaigns and accounts (password for all: arbiter-demo)."

    @transaction.atomic
    def handle(self, **options):
        data = json.loads(FIXTURE.read_text())
        users = {name: self._user(name, is_admin=role == "admin") for name, role in ACCOUNTS}
        for spec in data["campaigns"]:
            campaign, created = Campaign.objects.get_or_create(slug=spec["slug"], defaults={**spec["settings"], "name": spec["name"]})
            if created:
                import_prompts(campaign, data["prompts"])
                import_responses(campaign, data["responses"][: spec.get("responses_limit")])
            for name, role in ACCOUNTS:
                Membership.objects.get_or_create(campaign=campaign, user=users[name], defaults={"role": role})
            simulated = self._simulate(campaign) if created else 0
            state = f"created, {simulated} simulated judgements" if created else "already there, left as it was"
            self.stdout.write(f"Campaign {campaign.slug} ({campaign.get_task_type_display()}, {campaign.tasks.count()} tasks): {state}")
        self.stdout.write("Accounts (password {}): {}".format(DEMO_PASSWORD, ", ".join(f"{n} ({r})" for n, r in ACCOUNTS)))
        self.stdout.write(f"Simulated labelers (their judgements are marked by the account): {', '.join(SIMULATED)}")

    def _simulate(self, campaign: Campaign) -> int:
        """Simulated labelers judge, through the same lease and write path as people, leaving a slot per task open."""
        coin = random.Random(campaign.slug)
        per_task = max(1, campaign.overlap - 1)
        done = 0
        for name in SIMULATED[:per_task]:
            labeler = self._user(name, is_admin=False, first_name="Simulated labeler")
            Membership.objects.get_or_create(campaign=campaign, user=labeler, defaults={"role": Membership.Role.LABELER})
            while (lease := assignment.next_task_for(labeler, campaign)) is not None:
                shown = task_content(lease.task).responses
                # longer first, most of the time: a preference a reward model can learn
                order = sorted(shown, key=lambda r: len(r.text) * (1 if coin.random() < AGREES_WITH_LENGTH else -1), reverse=True)
                judgements.submit(labeler, lease.task, [[r.id] for r in order], rationale="simulated")
                done += 1
        return done

    def _user(self, username: str, *, is_admin: bool, first_name: str = ""):
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": is_admin, "is_superuser": is_admin, "first_name": first_name}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        return user
