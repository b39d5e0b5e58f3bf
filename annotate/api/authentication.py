"""API token authentication in one hand-written query (DRF's builds an ORM join on every request).

Keys are stored as their SHA-256 (annotate/api/tokens.py): the header's key is hashed, then looked
up by the unique index on the digest.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from annotate.api.tokens import digest
from annotate.core import sql


class FastTokenAuthentication(TokenAuthentication):
    """Same header, same errors as `TokenAuthentication`; the user comes from a single SELECT."""

    def authenticate_credentials(self, key):
        row = sql.user_of_token(digest(key))
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = sql.instance(get_user_model(), row)
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, None
