"""REST API v1 for researchers: exports, snapshots and the read-only data API.

Everything here is for a campaign's researchers and admins: labelers get 403, non-members 404.
Labelers appear under a pseudonym (a stable salted hash per campaign); `identities=real` shows
usernames to campaign admins and is a 403 for researchers.

    GET  /api/v1/campaigns/{slug}/export/?shape=pairs&format=jsonl&...    streamed file
    GET  /api/v1/campaigns/{slug}/snapshots/                              list
    POST /api/v1/campaigns/{slug}/snapshots/ {name, shape, format, filters}
    GET  /api/v1/campaigns/{slug}/snapshots/{name}/download/              the file, byte for byte
    GET  /api/v1/campaigns/{slug}/data/{prompts,responses,tasks,judgements}/[{id}/]
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import django_filters
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db.models import F, Prefetch, Q, QuerySet
from django.http import FileResponse, Http404, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import api_view, content_negotiation_class
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response as DRFResponse
from rest_framework.routers import SimpleRouter

from annotate import access
from annotate.core.aborting import can_abort
from annotate.core.errors import DomainError
from annotate.exports import snapshot_job, snapshots
from annotate.exports.export import export_filename, stream_export, write_export
from annotate.exports.options import CONTENT_TYPES, FILTER_NAMES, FLAGGED, FORMATS, IDENTITIES, SHAPES, InvalidExport, parse_export
from annotate.exports.rows import LabelerNames
from annotate.jobs import engine
from annotate.models import Campaign, Judgement, Membership, Prompt, Response, Snapshot, Task, TaskResponse

ADMIN = Membership.Role.ADMIN
logger = logging.getLogger(__name__)


class ExportFailed(DomainError):
    status = 500
    code = "export_failed"


def check_identities(campaign: Campaign, identities: str) -> None:
    """Real usernames are for the campaign's admins only."""
    if identities not in IDENTITIES:
        raise InvalidExport(f"identities must be one of {', '.join(IDENTITIES)}; got {identities!r}.", field="identities", allowed=IDENTITIES)
    if identities == "real":
        access.require_real_names(campaign)


# ---------------------------------------------------------------- streaming responses


class _PullEachChunk(StreamingHttpResponse):
    """Stream a sync iterator under ASGI one chunk at a time.

    Django's ASGI handler would read a sync iterator whole before sending it
    (StreamingHttpResponse.__aiter__); here each chunk is pulled in the request's sync thread,
    where its database connection lives. Under WSGI nothing changes.
    """

    async def __aiter__(self):
        chunks = self.streaming_content
        assert isinstance(chunks, Iterator)  # from a sync iterator (StreamingHttpResponse maps it to bytes)
        pull = sync_to_async(_next_or_none, thread_sensitive=True)
        while (chunk := await pull(chunks, None)) is not None:
            yield chunk


def _next_or_none(chunks: Iterator[bytes], default: None) -> bytes | None:
    return next(chunks, default)


class ExportResponse(_PullEachChunk, StreamingHttpResponse):
    pass


class DownloadResponse(_PullEachChunk, FileResponse):
    block_size = 1 << 16  # Django's 4 KiB reads cost a thread hop each under ASGI, a channel send each under granian


class JSONOnly(DefaultContentNegotiation):
    """Here `format` names the export's container, not a DRF renderer: always answer errors in JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return super().select_renderer(request, renderers, format_suffix="json")


# ---------------------------------------------------------------- export

ERRORS = {
    400: OpenApiResponse(description="Unknown or bad parameter: `{code, detail, field, allowed}`."),
    403: OpenApiResponse(description="A labeler, or a researcher asking for real identities."),
    404: OpenApiResponse(description="Not a member of this campaign."),
}
_FILTER_HELP: dict[str, tuple[type | OpenApiTypes, str]] = {
    "since": (OpenApiTypes.DATETIME, "Judgements created at or after this ISO date or datetime."),
    "until": (OpenApiTypes.DATETIME, "Judgements created before this ISO date or datetime (exclusive)."),
    "models": (str, "Comma-separated model version names: tasks with a response from one of them."),
    "round": (str, "Comma-separated RLHF rounds: tasks with a response from a model version of one of them."),
    "min_gold_accuracy": (float, "Labelers whose gold accuracy is at least this (0 to 1); labelers without gold answers are left out."),
    "min_agreement": (float, "Tasks whose selected judgements agree at least this much (0 to 1); tasks judged once are left out."),
    "flagged": (str, "include (default), exclude or only judgements that carry a flag."),
    "include_paused": (bool, "Keep judgements of paused labelers (default false)."),
    "include_gold": (bool, "Keep judgements of gold tasks (default false)."),
    "include_surplus": (bool, "Keep surplus judgements (default true)."),
    "include_evaluation": (bool, "Keep judgements of the campaign's evaluation prompts, which training leaves out (default true)."),
}
FILTER_PARAMETERS = [
    OpenApiParameter(name, kind, description=help_, enum=FLAGGED if name == "flagged" else None) for name, (kind, help_) in _FILTER_HELP.items()
]
assert set(_FILTER_HELP) == set(FILTER_NAMES)
EXPORT_PARAMETERS = [
    OpenApiParameter(
        "shape", str, enum=SHAPES, default="pairs",
        description="pairs (TRL prompt/chosen/rejected), rankings (one row per judgement) or tasks (aggregated).",
    ),
    OpenApiParameter(
        "format", str, enum=FORMATS, default="jsonl",
        description="jsonl, jsonl.gz, parquet, or hf (a zipped `datasets` DatasetDict with a train/test split by prompt).",
    ),
    OpenApiParameter("text", bool, description="pairs only: plain-text prompt/chosen/rejected instead of chat messages."),
    OpenApiParameter("identities", str, enum=IDENTITIES, default="pseudonymous", description="real: usernames (campaign admins only)."),
    OpenApiParameter("test_fraction", float, description="hf only: share of prompts in the test split (default 0.1)."),
    OpenApiParameter("seed", int, description="hf only: seed of the prompt split (default 0)."),
    *FILTER_PARAMETERS,
]


@extend_schema(
    parameters=EXPORT_PARAMETERS,
    responses={(200, content_type): OpenApiTypes.BINARY for content_type in CONTENT_TYPES.values()} | ERRORS,
    description="Stream the campaign's preferences as a file. JSONL, gzip and Parquet stream in constant memory "
    "(under a WSGI server they are written to a temporary file first and sent with their Content-Length); "
    "hf is built on disk, then sent as a zip (unzip, then `datasets.load_from_disk`). An empty selection is a valid empty file.",
)
@api_view(["GET"])
@content_negotiation_class(JSONOnly)
def export(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    params = {key: ",".join(values) for key, values in request.query_params.lists()}
    options, filters = parse_export(params)
    check_identities(campaign, options.identities)
    filename = export_filename(campaign, options)
    response: StreamingHttpResponse
    if options.format == "hf":
        response = DownloadResponse(_before_any_byte(_built_zip, campaign, options, filters), as_attachment=True, filename=filename)
    elif not can_abort(request):  # WSGI: a failure half-way would look like a complete short file
        response = DownloadResponse(_before_any_byte(_spooled, stream_export(campaign, options, filters)), as_attachment=True, filename=filename)
    else:
        chunks = _before_any_byte(_first_chunk_pulled, stream_export(campaign, options, filters))
        response = ExportResponse(chunks, content_type=CONTENT_TYPES[options.format])
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Content-Type"] = CONTENT_TYPES[options.format]
    return response


def _before_any_byte(build, *args):
    """Run `build` while a failure can still be a JSON error (the status line is not sent yet)."""
    try:
        return build(*args)
    except DomainError:
        raise
    except Exception:
        logger.exception("export failed before its first byte")
        raise ExportFailed("The export failed before any data was sent; the details are in the server log.") from None


def _first_chunk_pulled(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The same chunks, the first one already computed (errors there become a JSON 500 above)."""
    first = next(chunks, None)
    return _aborting_on_error(first, chunks)


def _aborting_on_error(first: bytes | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """After the first byte an error cannot change the status: re-raised, the ASGI server cuts the connection
    before the final chunk (annotate/core/aborting.py for daphne), so the client sees a failed download."""
    if first is not None:
        yield first
    try:
        yield from chunks
    except Exception:
        logger.exception("export failed while streaming: the download is aborted")
        raise


def _spooled(chunks: Iterator[bytes]) -> BinaryIO:
    """The whole export in an unlinked temporary file (bounded by disk, not memory), rewound: sent once complete,
    with its Content-Length, so a failure is still a JSON 500 and a cut connection a short read."""
    spool = tempfile.TemporaryFile(prefix="arbiter-export-")
    try:
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


def _built_zip(campaign, options, filters):
    """The hf export zipped in a temporary folder, returned open and already unlinked."""
    tmp = tempfile.mkdtemp(prefix="arbiter-export-")
    try:
        path = Path(tmp) / export_filename(campaign, options)
        write_export(campaign, options, filters, path)
        return path.open("rb")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- snapshots


class SnapshotInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="Letters, digits, hyphens, underscores; unique in the campaign.")
    shape = serializers.CharField(default="pairs", help_text=f"One of {', '.join(SHAPES)}.")
    format = serializers.CharField(default="jsonl", help_text=f"One of {', '.join(FORMATS)}.")
    filters = serializers.DictField(
        default=dict,
        help_text="The export's filters as JSON (" + ", ".join(FILTER_NAMES) + "), and the options text, test_fraction, seed.",
    )


class SnapshotSerializer(serializers.ModelSerializer):
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Snapshot
        fields = ["name", "version", "shape", "format", "filters", "content_hash", "row_counts", "created_by", "created_at", "download_url"]

    def get_download_url(self, snapshot) -> str:
        return f"/api/v1/campaigns/{snapshot.campaign.slug}/snapshots/{snapshot.name}/download/"


@extend_schema(
    request=SnapshotInSerializer,
    responses={
        200: SnapshotSerializer(many=True),
        201: SnapshotSerializer,
        202: OpenApiResponse(description="A large campaign: the snapshot is being written by the run at `url`; its result names it."),
        409: OpenApiResponse(description="The name is taken; nothing was written."),
    } | ERRORS,
    description="List the campaign's snapshots (newest first), or freeze an export as a named snapshot "
    "with a version, a sha256 content hash and row counts. Snapshots are always pseudonymous.",
)
@api_view(["GET", "POST"])
def snapshot_list(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    if request.method == "GET":
        rows = campaign.snapshots.select_related("campaign", "created_by").order_by("-version")
        return DRFResponse(SnapshotSerializer(rows, many=True).data)
    body = SnapshotInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    if snapshot_job.in_background(campaign):
        run = engine.start_run("snapshot", campaign=campaign, params=data, user=request.user)
        return DRFResponse({"run": run.pk, "status": run.status, "url": f"/api/v1/runs/{run.pk}/"}, status=status.HTTP_202_ACCEPTED)
    options, filters = snapshot_job.parse(data)
    snapshot = snapshots.create_snapshot(campaign, data["name"], options, filters, user=request.user)
    return DRFResponse(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)


@extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 404: OpenApiResponse(description="No such snapshot.")})
@api_view(["GET"])
def snapshot_download(request, slug, name):
    """The snapshot's file, byte for byte; its sha256 is in the ETag."""
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    snapshot = campaign.snapshots.filter(name=name).first()
    if snapshot is None:
        raise Http404
    try:
        handle = snapshots.snapshot_file(snapshot).open("rb")
    except FileNotFoundError:
        raise Http404("The snapshot's file is missing from the artifacts folder.") from None
    response = DownloadResponse(handle, as_attachment=True, filename=Path(snapshot.path).name)
    response["Content-Type"] = CONTENT_TYPES[snapshot.format]
    response["ETag"] = f'"{snapshot.content_hash}"'
    return response


# ---------------------------------------------------------------- data API


class DataPagination(CursorPagination):
    """Cursor pages by id: steady cost however deep the page (no OFFSET, no COUNT)."""

    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class PromptData(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "external_id", "messages", "context", "metadata", "created_at"]


class ResponseData(serializers.ModelSerializer):
    prompt_id = serializers.CharField(source="prompt.external_id", help_text="The prompt's external id.")
    model = serializers.CharField(source="model_version.name")
    round = serializers.IntegerField(source="model_version.round", allow_null=True)

    class Meta:
        model = Response
        fields = ["id", "prompt_id", "model", "round", "text", "generation_params", "created_at"]


class TaskData(serializers.ModelSerializer):
    prompt_id = serializers.CharField(source="prompt.external_id", help_text="The prompt's external id.")
    response_ids = serializers.SerializerMethodField(help_text="The task's responses in display order.")

    class Meta:
        model = Task
        fields = ["id", "prompt_id", "response_ids", "is_gold", "gold_ranking", "priority", "judgements_needed", "judgements_received",
                  "created_at"]

    def get_response_ids(self, task) -> list[int]:
        return [slot.response_id for slot in task.slots.all()]


class JudgementData(serializers.ModelSerializer):
    task = serializers.IntegerField(source="task_id")
    labeler = serializers.SerializerMethodField(help_text="Pseudonym (stable per campaign), or the username with identities=real.")

    class Meta:
        model = Judgement
        fields = ["id", "task", "labeler", "ranking", "rationale", "flags", "ratings", "time_spent_ms", "is_surplus", "created_at"]

    def get_labeler(self, judgement) -> str:
        return self.context["names"](judgement.labeler_id)


class CreatedRange(django_filters.FilterSet):
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="Created at or after (ISO datetime).")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="Created before (ISO datetime).")


class PromptFilter(CreatedRange):
    external_id = django_filters.CharFilter(help_text="The prompt's external id.")

    class Meta:
        model = Prompt
        fields: list[str] = []


class ResponseFilter(CreatedRange):
    prompt_id = django_filters.CharFilter(field_name="prompt__external_id", help_text="The prompt's external id.")
    model = django_filters.CharFilter(field_name="model_version__name", help_text="Model version name.")
    round = django_filters.NumberFilter(field_name="model_version__round", help_text="RLHF round of the model version.")

    class Meta:
        model = Response
        fields: list[str] = []


class TaskFilter(CreatedRange):
    prompt_id = django_filters.CharFilter(field_name="prompt__external_id", help_text="The prompt's external id.")
    is_gold = django_filters.BooleanFilter()
    model = django_filters.CharFilter(
        field_name="responses__model_version__name", distinct=True, help_text="Tasks with a response from this model version."
    )
    complete = django_filters.BooleanFilter(method="filter_complete", help_text="Tasks that have all the judgements they need.")

    class Meta:
        model = Task
        fields: list[str] = []

    def filter_complete(self, queryset, name, value):
        complete = Q(judgements_received__gte=F("judgements_needed"))
        return queryset.filter(complete if value else ~complete)


class JudgementFilter(CreatedRange):
    task = django_filters.NumberFilter(field_name="task_id")
    prompt_id = django_filters.CharFilter(field_name="task__prompt__external_id", help_text="The prompt's external id.")
    labeler = django_filters.CharFilter(
        method="filter_labeler", help_text="A labeler's pseudonym (or username, for admins with identities=real)."
    )
    is_surplus = django_filters.BooleanFilter()
    is_gold = django_filters.BooleanFilter(field_name="task__is_gold", help_text="Judgements of gold tasks.")
    flagged = django_filters.BooleanFilter(method="filter_flagged", help_text="Judgements with (true) or without (false) flags.")

    class Meta:
        model = Judgement
        fields: list[str] = []

    def filter_labeler(self, queryset, name, value):
        names = self.request.parser_context["view"].names
        labelers = queryset.order_by().values_list("labeler_id", flat=True).distinct()
        return queryset.filter(labeler_id__in=[uid for uid in labelers if names(uid) == value])

    def filter_flagged(self, queryset, name, value):
        return queryset.exclude(flags=[]) if value else queryset.filter(flags=[])


IDENTITIES_PARAMETER = OpenApiParameter(
    "identities", str, enum=IDENTITIES, default="pseudonymous", description="real: usernames (campaign admins only)."
)


class CampaignData(viewsets.ReadOnlyModelViewSet):
    """Read-only rows of one campaign, for its researchers and admins."""

    pagination_class = DataPagination
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend]
    campaign: Campaign

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.campaign = access.campaign_for(request.user, kwargs["slug"], access.READING_ROLES)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no campaign
            return super().get_queryset().none()
        return self.campaign_rows(self.campaign)

    def campaign_rows(self, campaign: Campaign) -> QuerySet:
        """The campaign's rows of this view's model."""
        raise NotImplementedError


@extend_schema_view(list=extend_schema(description="The campaign's prompts."), retrieve=extend_schema(description="One prompt."))
class PromptDataView(CampaignData):
    queryset = Prompt.objects.all()
    serializer_class = PromptData
    filterset_class = PromptFilter

    def campaign_rows(self, campaign):
        return Prompt.objects.filter(campaign=campaign)


@extend_schema_view(
    list=extend_schema(description="The campaign's responses with their model versions."), retrieve=extend_schema(description="One response.")
)
class ResponseDataView(CampaignData):
    queryset = Response.objects.all()
    serializer_class = ResponseData
    filterset_class = ResponseFilter

    def campaign_rows(self, campaign):
        return Response.objects.filter(prompt__campaign=campaign).select_related("prompt", "model_version")


@extend_schema_view(list=extend_schema(description="The campaign's tasks."), retrieve=extend_schema(description="One task."))
class TaskDataView(CampaignData):
    queryset = Task.objects.all()
    serializer_class = TaskData
    filterset_class = TaskFilter

    def campaign_rows(self, campaign):
        slots = Prefetch("slots", queryset=TaskResponse.objects.order_by("position").only("task_id", "response_id"))
        return Task.objects.filter(campaign=campaign).select_related("prompt").prefetch_related(slots)


@extend_schema_view(
    list=extend_schema(
        description="The campaign's judgements; labelers pseudonymous unless an admin asks for identities=real.", parameters=[IDENTITIES_PARAMETER]
    ),
    retrieve=extend_schema(description="One judgement.", parameters=[IDENTITIES_PARAMETER]),
)
class JudgementDataView(CampaignData):
    queryset = Judgement.objects.all()
    serializer_class = JudgementData
    filterset_class = JudgementFilter

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        identities = request.query_params.get("identities", "pseudonymous")
        check_identities(self.campaign, identities)
        self.names = LabelerNames(self.campaign, real=identities == "real")

    def campaign_rows(self, campaign):
        return Judgement.objects.filter(task__campaign=campaign)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "names": getattr(self, "names", None)}


data_router = SimpleRouter()
data_router.register("prompts", PromptDataView, basename="data-prompts")
data_router.register("responses", ResponseDataView, basename="data-responses")
data_router.register("tasks", TaskDataView, basename="data-tasks")
data_router.register("judgements", JudgementDataView, basename="data-judgements")
