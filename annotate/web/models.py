"""The model registry page (staff): every version with its kind, lineage, architecture and size."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from annotate import access
from annotate.models import ModelVersion


@login_required
@require_GET
def registry(request):
    access.require_staff(request.user)
    versions = ModelVersion.objects.select_related("parent", "run").order_by("-created_at")[:500]
    return render(request, "annotate/models.html", {"versions": versions})
