"""REST API v1: the campaign dashboard's figures, as JSON or as the HTML partial the live page swaps in."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view, renderer_classes
from rest_framework.renderers import JSONRenderer, TemplateHTMLRenderer
from rest_framework.response import Response

from annotate import access
from annotate.stats.dashboard import dashboard_context, dashboard_figures


@extend_schema(
    parameters=[OpenApiParameter("format", str, enum=["json", "html"], required=False)],
    responses={200: {"type": "object"}},
    description="Progress (done / in flight / remaining), activity over time, agreement (Krippendorff's alpha; "
    "raw agreement and Fleiss' kappa for pairwise campaigns), per-labeler agreement, per-model win rate and "
    "Bradley–Terry strength with a 95% bootstrap interval, and criteria means. Campaign admins and researchers. "
    "`?format=html` returns the dashboard partial (with plots) that the campaign page refreshes live.",
)
@api_view(["GET"])
@renderer_classes([JSONRenderer, TemplateHTMLRenderer])
def campaign_dashboard(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    if request.accepted_renderer.format == "html":
        return Response({"campaign": campaign, **dashboard_context(campaign)}, template_name="annotate/_dashboard_figures.html")
    return Response(dashboard_figures(campaign))
