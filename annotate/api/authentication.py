"""API token authentication in one hand-written query (DRF's builds an ORM join on every request).

Keys are stored as their SHA-256 (annotate/api/tokens.py): the header's key is hashed, then looked
up by the unique index on the digest.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from annotate.api.tokens import digest
from annotate.core import sql
from annotate.models import ApiToken


class FastTokenAuthentication(TokenAuthentication):
    """Same header, same errors as `TokenAuthentication`; the user comes from a single SELECT."""

    def authenticate_credentials(self, key):
        User = get_user_model()
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {sql.select_list(User, 'u')} FROM {ApiToken._meta.db_table} t "
                f"JOIN {User._meta.db_table} u ON u.id = t.user_id WHERE t.digest = %s",
                [digest(key)],
            )
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = sql.instance(User, row)
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, None
