"""API keys: issued once in clear, stored as a SHA-256 digest (a leaked database holds no usable key).

A key is 40 random hex characters (160 bits, as DRF's), so one unsalted SHA-256 is enough: there is
nothing to guess, and the lookup stays a single indexed equality.
"""
from __future__ import annotations

import hashlib
import secrets

from django.db import transaction

from annotate.models import ApiToken


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def issue_token(user, *, replace: bool = True) -> str:
    """A new key for `user` (replacing the earlier ones unless `replace=False`); the only time the key is seen."""
    key = secrets.token_hex(20)
    with transaction.atomic():
        if replace:
            ApiToken.objects.filter(user=user).delete()
        ApiToken.objects.create(user=user, digest=digest(key))
    return key


def has_token(user) -> bool:
    return ApiToken.objects.filter(user=user).exists()
