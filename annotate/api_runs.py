"""REST API v1 for runs (background jobs) and the model registry."""
from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from . import access, jobs
from .imports import normalise_messages
from .models import Membership, ModelVersion, Run
from .registry import RegistryError
from .scoring import score_responses

ADMIN = (Membership.Role.ADMIN,)


class RunInSerializer(serializers.Serializer):
    kind = serializers.CharField()
    params = serializers.JSONField(required=False, default=dict)


class RunSerializer(serializers.ModelSerializer):
    campaign = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    metrics = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = ["id", "kind", "campaign", "params", "created_by", "status", "queue_name", "progress", "progress_message",
                  "log_tail", "artifacts", "result", "error", "cancel_requested", "worker", "created_at", "started_at",
                  "finished_at", "heartbeat_at", "metrics"]

    def get_metrics(self, run) -> dict:
        return {name: [[step, value] for step, value in points] for name, points in jobs.metric_series(run).items()}


class ModelVersionSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "kind", "parent", "checkpoint_path", "run", "metadata", "created_at"]


def run_for(user, run_id: int, roles=access.READING_ROLES) -> Run:
    """A run of a campaign the user administers or researches (404 otherwise)."""
    run = Run.objects.select_related("campaign", "created_by").filter(pk=run_id).first()
    if run is None:
        raise Http404
    if run.campaign is None:
        if not user.is_staff:
            raise Http404
    else:
        access.require_role(user, run.campaign, roles)
    return run


@extend_schema(request=RunInSerializer, responses={200: RunSerializer(many=True), 201: RunSerializer})
@api_view(["GET", "POST"])
def campaign_runs(request, slug):
    """List the campaign's runs, or start one (`{kind: "generate", params: {...}}`, campaign admins)."""
    if request.method == "GET":
        campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
        jobs.fail_stale_runs()
        runs = campaign.runs.select_related("campaign", "created_by").order_by("-created_at")[:100]
        return Response(RunSerializer(runs, many=True).data)
    campaign = access.campaign_for(request.user, slug, ADMIN)
    body = RunInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    run = jobs.start_run(body.validated_data["kind"], campaign=campaign, params=body.validated_data["params"], user=request.user)
    return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=RunSerializer)
@api_view(["GET"])
def run_detail(request, run_id):
    """Status, progress, metrics, log tail and artifacts of a run."""
    jobs.fail_stale_runs()
    return Response(RunSerializer(run_for(request.user, run_id)).data)


@extend_schema(request=None, responses=RunSerializer)
@api_view(["POST"])
def run_cancel(request, run_id):
    run = run_for(request.user, run_id, ADMIN)
    if run.is_finished:
        return Response({"code": "finished", "detail": f"the run already ended ({run.status})."}, status=status.HTTP_409_CONFLICT)
    return Response(RunSerializer(jobs.request_cancel(run)).data)


class ScoreInSerializer(serializers.Serializer):
    prompt = serializers.JSONField(help_text="The prompt: a string (one user turn) or a list of chat messages.")
    responses = serializers.ListField(child=serializers.CharField(allow_blank=True, trim_whitespace=False), min_length=1, max_length=64)


class ScoreOutSerializer(serializers.Serializer):
    scores = serializers.ListField(child=serializers.FloatField())


@extend_schema(request=ScoreInSerializer, responses=ScoreOutSerializer)
@api_view(["POST"])
def score(request, model_id):
    """Reward-model scores of responses to one prompt (staff, or admins/researchers of the model's campaign)."""
    version = ModelVersion.objects.filter(pk=model_id).first()
    if version is None or not _may_use(request.user, version):
        raise Http404
    body = ScoreInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        messages = normalise_messages({"messages": body.validated_data["prompt"]})
    except ValueError as exc:
        return Response({"prompt": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    try:
        scores = score_responses(version, messages, body.validated_data["responses"])
    except RegistryError as exc:
        return Response({"code": "not_a_reward_model", "detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return Response({"scores": scores})


def _may_use(user, version: ModelVersion) -> bool:
    if user.is_staff or user.is_superuser:
        return True
    slug = version.metadata.get("campaign")
    return bool(slug) and Membership.objects.filter(campaign__slug=slug, user=user, role__in=access.READING_ROLES).exists()


@extend_schema(responses=ModelVersionSerializer(many=True))
@api_view(["GET"])
def models(request):
    """The model registry (any signed-in user: names and lineage only, no campaign data)."""
    versions = ModelVersion.objects.select_related("parent").order_by("-created_at")
    kind = request.query_params.get("kind")
    if kind:
        if kind not in ModelVersion.Kind.values:
            return Response({"kind": [f"must be one of {ModelVersion.Kind.values}"]}, status=400)
        versions = versions.filter(kind=kind)
    return Response(ModelVersionSerializer(versions[:500], many=True).data)
