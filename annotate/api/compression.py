"""REST API v1 for optimised models: a version's comparison against its source (figures of each optimize run)."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.response import Response

from annotate import access
from annotate.models import ModelVersion
from annotate.runs.compression import FIGURES, comparisons, runs_comparing


class ComparisonSerializer(serializers.Serializer):
    model = serializers.CharField()
    source = serializers.CharField(allow_null=True)  # type: ignore[assignment]  # a declared field; the stubs see the base class's attribute of that name
    figures = serializers.ListField(child=serializers.CharField(), help_text="The figure columns of each row, in order.")
    comparisons = serializers.ListField(
        child=serializers.DictField(),
        help_text="One per optimize run, newest first: run, campaign, created_at, source, source_id, and rows "
                  "(the source first, then each optimised version: model, id, method, size_mb, load_s, tokens_per_s, "
                  "tokens, perplexity, reward, agreement).",
    )


@extend_schema(responses=ComparisonSerializer)
@api_view(["GET"])
def comparison(request, model_id):
    """The figures of a model's optimised versions beside the source's: of the runs that optimised it, or
    (for an optimised version) of the run that made it. Only runs of campaigns you administer or research."""
    version = access.visible_model_for(request.user, model_id)
    return Response(comparison_for(request.user, version))


def comparison_for(user, version: ModelVersion) -> dict:
    runs = access.readable_runs(user, runs_comparing(version))
    source = version.parent if "optimization" in version.metadata else version
    return {"model": version.name, "source": getattr(source, "name", None), "figures": list(FIGURES), "comparisons": comparisons(runs)}
