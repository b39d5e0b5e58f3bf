"""REST API v1 for campaign admins: file imports, tasks and gold answers, labelers."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Prefetch
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from annotate import access
from annotate.api.parsers import FormParser, MultiPartParser
from annotate.api.runs import RunSerializer
from annotate.campaigns import members
from annotate.campaigns.imports import files
from annotate.labeling import gold
from annotate.models import Membership, Task, TaskResponse
from annotate.stats.labeler_stats import LabelerStats, agreement_by_labeler, labeler_stats

ADMIN = (Membership.Role.ADMIN,)


# IMPORTS


class FileImportSerializer(serializers.Serializer):
    file = serializers.FileField()
    kind = serializers.ChoiceField(choices=files.KINDS)
    on_duplicate = serializers.ChoiceField(choices=["error", "skip"], default="error")
    model = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text="The model that wrote the responses, where no column names one.")
    create_models = serializers.BooleanField(default=False, help_text="Register model names not seen before (off: an unknown name is an error).")
    format = serializers.ChoiceField(choices=files.FORMATS, required=False, help_text="Leave out to detect it from the name and content.")
    split = serializers.CharField(required=False, allow_blank=True, max_length=100, help_text="Split of a saved DatasetDict (default: train).")


class ImportSummarySerializer(serializers.Serializer):
    format = serializers.CharField()
    kind = serializers.CharField()
    rows = serializers.IntegerField()
    prompts_created = serializers.IntegerField()
    responses_created = serializers.IntegerField()
    tasks_built = serializers.IntegerField()
    skipped = serializers.ListField(child=serializers.DictField(), help_text="[{row, external_id, reason}] of duplicate prompts left out.")
    skipped_count = serializers.IntegerField()
    responses_skipped = serializers.IntegerField()
    warnings = serializers.ListField(child=serializers.CharField())
    errors = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]  # a declared field; the stubs see the base class's attribute of that name


IMPORT_DOC = """Multipart `file` plus `kind`:

- `prompts`: columns `external_id` (or `id`, `prompt_id`; without one an id is derived from the content),
  `text` | `prompt` (one user turn) | `messages` (a list of {role, content}), optional `context`, `metadata`;
  other columns are kept in the metadata.
- `responses`: `prompt` (the prompt's external_id), `text` | `response` | `completion`, `model`
  (or the `model` field for the whole file), optional `generation_params`.
- `preferences`: a prompt with its responses per row, TRL style: `prompt` + `chosen` + `rejected`
  (models from `chosen_model`/`rejected_model`, `model`, or the `model` field), or `prompt` + `completions`
  (with a parallel `models` list). Conversational rows and Anthropic HH text (no prompt column) work too.
  A Label Studio JSON export (data.prompt with data.answer1, answer2, ...) is read the same way.

Formats: CSV (UTF-8; lists and objects as JSON text), JSONL, JSON, Parquet, a zipped `datasets` folder
(`save_to_disk`; `split` picks a split). All or nothing: a bad row rejects the file and `errors` lists
`{row, error}` (rows count from 1; JSONL rows are line numbers). Prompts already in the campaign are errors,
or skipped with `on_duplicate=skip`. Unknown model names are errors unless `create_models=true`.
Files over the size or row limit get 413; files over IMPORT_SYNC_ROWS rows are imported by a background
run (202, poll the run)."""


@extend_schema(
    request={"multipart/form-data": FileImportSerializer},
    responses={
        201: ImportSummarySerializer,
        202: OpenApiResponse(RunSerializer, description="A large file: imported by a background run (poll /api/v1/runs/{id}/)."),
        400: OpenApiResponse(description="Nothing imported: `detail`, and `errors` as [{row, error}] (rows count from 1)."),
        413: OpenApiResponse(description="The file is over the size or row limit."),
    },
    description=IMPORT_DOC,
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
def file_import(request, slug):
    """Import prompts, responses, or prompts with their responses from a file (all or nothing)."""
    campaign = access.campaign_for(request.user, slug, ADMIN)
    body = FileImportSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    options = files.import_options(body.validated_data)
    summary, run = files.import_upload(campaign, body.validated_data["file"], options, request.user)
    if run is not None:
        return Response(RunSerializer(run, context={"request": request}).data, status=status.HTTP_202_ACCEPTED, headers={"Location": f"/api/v1/runs/{run.pk}/"})
    return Response(summary, status=status.HTTP_201_CREATED)


# TASKS AND GOLD


class TaskResponseOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model = serializers.CharField()
    text = serializers.CharField()


class AdminTaskSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prompt = serializers.CharField(help_text="The prompt's external_id.")
    responses = TaskResponseOutSerializer(many=True)
    is_gold = serializers.BooleanField()
    gold_ranking = serializers.JSONField(allow_null=True)
    judgements_received = serializers.IntegerField()
    judgements_needed = serializers.IntegerField()


@extend_schema(
    parameters=[OpenApiParameter("gold", bool, description="Only gold tasks."), OpenApiParameter("page", int)],
    responses=AdminTaskSerializer(many=True),
)
@api_view(["GET"])
def tasks(request, slug):
    """The campaign's tasks, newest first, with their responses and model names (campaign admins)."""
    campaign = access.campaign_for(request.user, slug, ADMIN)
    rows = Task.objects.filter(campaign=campaign).order_by("-id")
    if request.query_params.get("gold") in ("1", "true"):
        rows = rows.filter(is_gold=True)
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(rows.only("id"), request) or []  # None only without a PAGE_SIZE setting
    slots = TaskResponse.objects.select_related("response__model_version").order_by("position")
    full = Task.objects.filter(pk__in=[t.pk for t in page]).select_related("prompt").prefetch_related(Prefetch("slots", queryset=slots)).order_by("-id")
    return paginator.get_paginated_response([_task_body(t) for t in full])


def _task_body(task: Task) -> dict:
    return {
        "id": task.pk,
        "prompt": task.prompt.external_id,
        "responses": [{"id": s.response_id, "model": s.response.model_version.name, "text": s.response.text} for s in task.slots.all()],
        "is_gold": task.is_gold,
        "gold_ranking": task.gold_ranking,
        "judgements_received": task.judgements_received,
        "judgements_needed": task.judgements_needed,
    }


class GoldInSerializer(serializers.Serializer):
    ranking = serializers.JSONField(help_text="The known answer: groups of response ids, best first ([[3], [5, 7]]); at least two groups.")


@extend_schema(request=GoldInSerializer, responses={200: inline_serializer("GoldOut", {"task_id": serializers.IntegerField(), "is_gold": serializers.BooleanField(), "gold_ranking": serializers.JSONField()})})
@api_view(["POST"])
def mark_gold(request, task_id):
    """Make a task gold with its known answer, or change the answer (admins of the task's campaign)."""
    task = Task.objects.select_related("campaign").filter(pk=task_id).first()
    if task is None:
        raise Http404
    access.require_role(request.user, task.campaign, ADMIN)
    body = GoldInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    task = gold.mark_gold(task, body.validated_data["ranking"])
    return Response({"task_id": task.pk, "is_gold": task.is_gold, "gold_ranking": task.gold_ranking})


# LABELERS


class LabelerInSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.LABELER)
    email = serializers.EmailField(required=False, allow_blank=True)


class LabelerSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.CharField()
    is_active = serializers.BooleanField()
    is_paused = serializers.BooleanField()
    paused_reason = serializers.CharField()
    judgements = serializers.IntegerField()
    median_seconds = serializers.FloatField(allow_null=True)
    skip_rate = serializers.FloatField(allow_null=True)
    gold_accuracy = serializers.FloatField(allow_null=True)
    gold_answered = serializers.IntegerField()
    agreement = serializers.FloatField(allow_null=True, required=False, help_text="Absent when the campaign has no agreement figures.")


class LabelerChangeSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices, required=False)
    is_paused = serializers.BooleanField(required=False)
    paused_reason = serializers.CharField(required=False, allow_blank=True, max_length=200)
    is_active = serializers.BooleanField(required=False, help_text="false deactivates the account (no login, no token).")


@extend_schema(
    methods=["GET"],
    parameters=[OpenApiParameter("role", str), OpenApiParameter("page", int)],
    responses=LabelerSerializer(many=True),
)
@extend_schema(
    methods=["POST"],
    request=LabelerInSerializer,
    responses={201: inline_serializer("LabelerAdded", {"username": serializers.CharField(), "role": serializers.CharField(), "created_user": serializers.BooleanField(), "password": serializers.CharField(required=False, help_text="Only when the account was created: shown once.")})},
)
@api_view(["GET", "POST"])
def labeler_list(request, slug):
    """The campaign's members with how each works (GET), or add one, creating the account if the name is new (POST)."""
    campaign = access.campaign_for(request.user, slug, ADMIN)
    if request.method == "POST":
        body = LabelerInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        added = members.add_member(campaign, request.user, data["username"], data["role"], email=data.get("email", ""))
        out = {"username": added.membership.user.username, "role": added.membership.role, "created_user": added.created_user}
        if added.password:
            out["password"] = added.password
        return Response(out, status=status.HTTP_201_CREATED)
    memberships = Membership.objects.filter(campaign=campaign).select_related("user").order_by("user__username")
    if request.query_params.get("role") in Membership.Role.values:
        memberships = memberships.filter(role=request.query_params["role"])
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(memberships, request) or []  # None only without a PAGE_SIZE setting
    agreement = agreement_by_labeler(campaign)
    stats = labeler_stats(campaign, [m.user_id for m in page], agreement)
    return paginator.get_paginated_response([_labeler_body(m, stats[m.user_id], agreement is not None) for m in page])


def _labeler_body(membership: Membership, stats: LabelerStats, with_agreement: bool) -> dict:
    body = {
        "username": membership.user.username,
        "role": membership.role,
        "is_active": membership.user.is_active,
        "is_paused": membership.is_paused,
        "paused_reason": membership.paused_reason,
        "judgements": stats.judgements,
        "median_seconds": stats.median_seconds,
        "skip_rate": stats.skip_rate,
        "gold_accuracy": stats.gold_accuracy,
        "gold_answered": stats.gold_answered,
    }
    if with_agreement:
        body["agreement"] = stats.agreement
    return body


@extend_schema(request=LabelerChangeSerializer, responses=LabelerSerializer)
@api_view(["PATCH"])
def labeler_detail(request, slug, username):
    """Change a member's role, pause or resume them here, or (de)activate their account."""
    campaign = access.campaign_for(request.user, slug, ADMIN)
    user = get_user_model().objects.filter(username=username, memberships__campaign=campaign).first()
    if user is None:
        raise Http404
    body = LabelerChangeSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    with transaction.atomic():  # all the changes or none
        if "role" in data:
            members.change_role(campaign, request.user, user, data["role"])
        if "is_paused" in data:
            members.set_paused(campaign, user, data["is_paused"], data.get("paused_reason", ""))
        if "is_active" in data:
            members.set_active(request.user, user, data["is_active"])
    membership = Membership.objects.select_related("user").get(campaign=campaign, user=user)
    agreement = agreement_by_labeler(campaign)
    stats = labeler_stats(campaign, [user.pk], agreement)
    return Response(_labeler_body(membership, stats[user.pk], agreement is not None))

