"""Middleware: refuse NUL characters and lone surrogates in query strings and HTML form posts with a 400.

API bodies are checked by the API's parsers (annotate/api/parsers.py), which know JSON; this covers
what they do not see: every query string, and the forms of the HTML pages.
"""
from __future__ import annotations

from django.http import HttpResponseBadRequest, JsonResponse

from annotate.core.text_input import BadText, check_data

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RefuseBadTextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            check_data(dict(request.GET.lists()))
            if request.method == "POST" and request.content_type in FORM_TYPES and not _is_api(request):
                check_data(dict(request.POST.lists()))
        except BadText as exc:
            return _refusal(request, exc)
        return self.get_response(request)


def _is_api(request) -> bool:
    return request.path_info.startswith("/api/")


def _refusal(request, exc: BadText):
    field = exc.field.split("[", 1)[0] or "body"
    message = f"{field} {exc.problem}."
    if _is_api(request):
        return JsonResponse({"code": "bad_input", "detail": message, "field": field}, status=400)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
