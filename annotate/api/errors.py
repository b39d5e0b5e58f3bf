"""DRF exception handler: domain errors and oversize bodies become clear 4xx JSON responses."""
from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotate.core.errors import DomainError


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        return Response({"code": "too_large", "detail": "The request body is too large."}, status=413)
    return drf_exception_handler(exc, context)
