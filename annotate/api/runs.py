"""REST API v1 for runs (background jobs) and the model registry."""
from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from annotate import access
from annotate.campaigns.imports.batches import MAX_TEXT_CHARS, check_size, normalise_context, normalise_messages
from annotate.core.redact import hide_paths
from annotate.jobs import engine
from annotate.models import Campaign, ModelVersion, Run
from annotate.runs.registry import RegistryError
from annotate.runs.scoring import score_responses


class RunInSerializer(serializers.Serializer):
    kind = serializers.CharField()
    params = serializers.JSONField(required=False, default=dict)


class RunSerializer(serializers.ModelSerializer):
    campaign: serializers.SlugRelatedField[Campaign] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    metrics = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = ["id", "kind", "campaign", "params", "created_by", "status", "queue_name", "progress", "progress_message",
                  "log_tail", "artifacts", "result", "error", "cancel_requested", "worker", "created_at", "started_at",
                  "finished_at", "heartbeat_at", "metrics"]

    def to_representation(self, run):
        request = self.context.get("request")
        return super().to_representation(access.run_as_seen_by(request.user if request else AnonymousUser(), run))

    def get_metrics(self, run) -> dict:
        return {name: [[step, value] for step, value in points] for name, points in engine.metric_series(run).items()}


class ModelVersionSerializer(serializers.ModelSerializer):
    parent: serializers.SlugRelatedField[ModelVersion] = serializers.SlugRelatedField(slug_field="name", read_only=True)  # type: ignore[assignment]  # a declared field; the stubs see the base class's attribute of that name
    checkpoint_path = serializers.CharField(read_only=True, required=False, help_text="Staff only: where the checkpoint lies on the server.")

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "kind", "parent", "checkpoint_path", "run", "metadata", "created_at"]

    def to_representation(self, version):
        data = super().to_representation(version)
        request = self.context.get("request")
        if request is None or not access.sees_server_detail(request.user):
            del data["checkpoint_path"]
            data["metadata"] = hide_paths(data["metadata"])
        return data


@extend_schema(request=RunInSerializer, responses={200: RunSerializer(many=True), 201: RunSerializer})
@api_view(["GET", "POST"])
def campaign_runs(request, slug):
    """List the campaign's runs, or start one (`{kind: "reward", params: {...}}`: researchers train, generation is for admins)."""
    if request.method == "GET":
        campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
        runs = campaign.runs.select_related("campaign", "created_by").order_by("-created_at")[:100]
        return Response(RunSerializer(runs, many=True, context={"request": request}).data)
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)  # strangers 404, labelers 403, before the body
    body = RunInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    access.require_role(request.user, campaign, access.roles_to_start(body.validated_data["kind"]))
    run = engine.start_run(body.validated_data["kind"], campaign=campaign, params=body.validated_data["params"], user=request.user)
    return Response(RunSerializer(run, context={"request": request}).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=RunSerializer)
@api_view(["GET"])
def run_detail(request, run_id):
    """Status, progress, metrics, log tail and artifacts of a run (server paths and tracebacks for staff only)."""
    return Response(RunSerializer(access.run_for(request.user, run_id), context={"request": request}).data)


@extend_schema(request=None, responses=RunSerializer)
@api_view(["POST"])
def run_cancel(request, run_id):
    run = access.run_for(request.user, run_id)  # 404 for strangers first, then the kind's roles
    run = access.run_for(request.user, run_id, access.roles_to_start(run.kind))
    if run.is_finished:
        return Response({"code": "finished", "detail": f"the run already ended ({run.status})."}, status=status.HTTP_409_CONFLICT)
    return Response(RunSerializer(engine.request_cancel(run), context={"request": request}).data)


class ScoreInSerializer(serializers.Serializer):
    prompt = serializers.JSONField(help_text="The prompt: a string (one user turn) or a list of chat messages.")
    responses = serializers.ListField(child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=MAX_TEXT_CHARS), min_length=1, max_length=64)
    context = serializers.JSONField(required=False, default=list, help_text="The prompt's context passages: strings or {title?, text}.")  # type: ignore[assignment, arg-type]  # a declared field named like a base attribute; the stubs allow only mapping defaults for JSON


class ScoreOutSerializer(serializers.Serializer):
    scores = serializers.ListField(child=serializers.FloatField())


@extend_schema(request=ScoreInSerializer, responses=ScoreOutSerializer)
@api_view(["POST"])
def score(request, model_id):
    """Reward-model scores of responses to one prompt (staff, or admins/researchers of the model's campaign)."""
    version = access.model_for(request.user, model_id)
    body = ScoreInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        messages = normalise_messages({"messages": body.validated_data["prompt"]})
        check_size("the prompt", sum(len(turn["content"]) for turn in messages))
    except ValueError as exc:
        return Response({"prompt": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    try:
        context = normalise_context(body.validated_data["context"])
    except ValueError as exc:
        return Response({"context": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    try:
        scores = score_responses(version, messages, body.validated_data["responses"], context=context)
    except RegistryError as exc:
        return Response({"code": "not_a_reward_model", "detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return Response({"scores": scores})


def registry_list(request) -> Response:
    """The model registry: staff see every model; others the models of campaigns where they are admin or
    researcher, and checkpoints of no campaign (access.visible_models). Server paths are for staff."""
    versions = access.visible_models(request.user, ModelVersion.objects.select_related("parent").order_by("-created_at"))
    kind = request.query_params.get("kind")
    if kind:
        if kind not in ModelVersion.Kind.values:
            return Response({"kind": [f"must be one of {ModelVersion.Kind.values}"]}, status=400)
        versions = versions.filter(kind=kind)
    return Response(ModelVersionSerializer(versions[:500], many=True, context={"request": request}).data)
