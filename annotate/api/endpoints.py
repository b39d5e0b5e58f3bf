"""REST API v1 for endpoints: OpenAI-compatible servers registered as model versions, and serving a trained policy.

    POST /api/v1/models/ {name, kind: "endpoint", endpoint: {...}} registers one (annotate.api.models)
    GET  /api/v1/models/<id>/serving/           the vLLM and TGI commands that serve the checkpoint
    POST /api/v1/models/<id>/served-by/         {endpoint: NAME | null}: generate through that server (staff)
"""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.response import Response

from annotate import access
from annotate.api.runs import ModelVersionSerializer
from annotate.runs import endpoints


class EndpointSettingsSerializer(serializers.Serializer):
    base_url = serializers.CharField(max_length=500, help_text="The server's OpenAI-compatible root, e.g. http://gpu-box:8000/v1.")
    model = serializers.CharField(max_length=300, help_text="The served model name.")
    api_key_env = serializers.CharField(max_length=128, required=False, allow_null=True, allow_blank=True,
                                        help_text="NAME of the workers' environment variable that holds the key (never the key).")
    max_concurrency = serializers.IntegerField(required=False, default=8)
    requests_per_minute = serializers.IntegerField(required=False, allow_null=True, default=None)
    timeout_seconds = serializers.IntegerField(required=False, default=120)
    sampling = serializers.DictField(required=False, default=dict, help_text="Default temperature, top_p, max_tokens.")


class EndpointInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=["endpoint"], required=False, default="endpoint")
    endpoint = EndpointSettingsSerializer()


class ServedByInSerializer(serializers.Serializer):
    endpoint = serializers.CharField(max_length=200, allow_null=True)


@extend_schema(responses={200: dict})
@api_view(["GET"])
def serving(request, model_id):
    """How to serve this checkpoint over the OpenAI protocol: the exact vLLM and TGI commands (staff: they name server paths)."""
    version = access.model_for(request.user, model_id)  # 404 for strangers, then staff only
    access.require_staff(request.user)
    return Response(endpoints.serve_commands(version))


@extend_schema(request=ServedByInSerializer, responses={200: ModelVersionSerializer})
@api_view(["POST"])
def served_by(request, model_id):
    """Name the endpoint that serves this policy (its generation then goes through that server), or null (staff)."""
    version = access.model_for(request.user, model_id)  # 404 for strangers, then staff only
    access.require_staff(request.user)
    body = ServedByInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    return Response(ModelVersionSerializer(endpoints.set_served_by(version, body.validated_data["endpoint"])).data)
