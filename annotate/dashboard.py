"""The campaign dashboard's figures (issue 7)."""
from __future__ import annotations

from .models import Campaign


def dashboard_context(campaign: Campaign) -> dict:
    """Template context for templates/annotate/_dashboard.html."""
    return {}
