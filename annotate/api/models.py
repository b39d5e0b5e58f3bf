"""REST API v1 for registering a model someone brings (staff): `POST /api/v1/models/`.

A checkpoint `{name, path, kind, chat_template?, copy?, base?}`, or an OpenAI-compatible server
`{name, kind: "endpoint", endpoint: {base_url, model, api_key_env?, ...}}` (annotate.api.endpoints).
GET on the same URL lists the registry (`annotate.api.runs.registry_list`), in this same request.
"""
from __future__ import annotations

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from annotate import access
from annotate.api import runs
from annotate.api.endpoints import EndpointInSerializer
from annotate.models import ModelVersion
from annotate.runs.endpoints import register_endpoint
from annotate.runs.registry import RegistryError, register_checkpoint


class RegisterModelSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    path = serializers.CharField(max_length=1000, help_text="A directory under MODEL_ROOTS, or a Hugging Face id in the local cache.")
    kind = serializers.ChoiceField(choices=[k for k in ModelVersion.Kind.values if k != ModelVersion.Kind.ENDPOINT])
    chat_template = serializers.CharField(required=False, allow_null=True, default=None, max_length=100_000, trim_whitespace=False,
                                          help_text="A Jinja chat template, for a tokenizer without one.")
    copy = serializers.BooleanField(required=False, default=False, help_text="Copy the weights under ARTIFACTS_DIR (default: link).")
    base = serializers.CharField(required=False, allow_null=True, default=None, max_length=200,
                                 help_text="For an adapter: the registered model it sits on (default: found from adapter_config).")


@extend_schema(methods=["POST"], request=PolymorphicProxySerializer("RegisterModel", [RegisterModelSerializer, EndpointInSerializer], None),
               responses={201: runs.ModelVersionSerializer})
@extend_schema(methods=["GET"], responses=runs.ModelVersionSerializer(many=True))
@api_view(["GET", "POST"])
def model_collection(request):
    """The model registry (GET), or register a checkpoint (POST, staff only): checked first, nothing written on a 400."""
    if request.method == "GET":
        return runs.registry_list(request)
    access.require_staff(request.user)
    if isinstance(request.data, dict) and request.data.get("kind") == ModelVersion.Kind.ENDPOINT:
        endpoint = EndpointInSerializer(data=request.data)
        endpoint.is_valid(raise_exception=True)
        version = register_endpoint(endpoint.validated_data["name"], **endpoint.validated_data["endpoint"])
        return Response(runs.ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)
    body = RegisterModelSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    try:
        version = register_checkpoint(data["name"], data["path"], data["kind"], chat_template=data["chat_template"],
                                      copy=data["copy"], base=data["base"])
    except RegistryError as exc:
        return Response({"code": "invalid_model", "detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return Response(runs.ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)
