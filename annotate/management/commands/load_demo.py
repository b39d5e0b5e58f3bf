"""`manage.py load_demo`: the demo campaigns (from annotate/fixtures/demo.json) and accounts. Idempotent."""
from __future__ import annotations

import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate.campaigns.imports.batches import import_prompts, import_responses
from annotate.models import Campaign, Membership

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "demo.json"
ACCOUNTS = [("admin", "admin"), ("alice", "labeler"), ("bob", "labeler"), ("rita", "researcher")]
DEMO_PASSWORD = "arbiter-demo"


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
        self.stdout.write("Accounts (password {}): {}".format(DEMO_PASSWORD, ", ".join(f"{n} ({r})" for n, r in ACCOUNTS)))

    def _user(self, username: str, *, is_admin: bool):
        user, created = get_user_model().objects.get_or_create(username=username, defaults={"is_staff": is_admin, "is_superuser": is_admin})
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        return user
