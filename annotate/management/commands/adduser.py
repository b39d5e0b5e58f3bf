"""`manage.py adduser USERNAME --role admin|researcher|labeler [--campaign SLUG] [--new-token]`: create an account, print its API token once."""
from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotate.api.tokens import has_token, issue_token
from annotate.models import Campaign, Membership


class Command(BaseCommand):
    help = "Create (or update) a user, optionally add them to a campaign with a role, and print their API token."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[r.value for r in Membership.Role])
        parser.add_argument("--campaign", help="Slug of the campaign to join with this role.")
        parser.add_argument("--password", help="Password for the web login (default: a random one, printed).")
        parser.add_argument("--new-token", action="store_true", help="Replace the user's API token (the old one stops working).")

    @transaction.atomic
    def handle(self, username, role, campaign=None, password=None, new_token=False, **options):
        target = None
        if campaign:
            target = Campaign.objects.filter(slug=campaign).first()
            if target is None:
                raise CommandError(f"No campaign with slug {campaign!r}.")
        user, created = get_user_model().objects.get_or_create(username=username)
        if created or password:
            password = password or secrets.token_urlsafe(12)
            user.set_password(password)
        if role == Membership.Role.ADMIN and target is None:
            user.is_staff = True  # an admin without a campaign may create campaigns
        user.save()
        if target is not None:
            Membership.objects.update_or_create(campaign=target, user=user, defaults={"role": role})
        # Tokens are stored hashed: a key is printed once, when it is issued.
        key = issue_token(user) if new_token or not has_token(user) else None
        self.stdout.write(f"user: {username}")
        if password:
            self.stdout.write(f"password: {password}")
        self.stdout.write(f"token: {key}" if key else "token: (issued earlier and shown then; --new-token replaces it)")
