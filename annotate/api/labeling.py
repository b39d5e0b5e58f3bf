"""REST API v1: parse, check access, call the service functions, serialise."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.response import Response

from annotate import access
from annotate.api.parsers import JSONParser
from annotate.api.serializers import (
    CampaignSerializer,
    ImportResultSerializer,
    JudgementInSerializer,
    JudgementOutSerializer,
    MemberSerializer,
    NextTaskSerializer,
    ProgressSerializer,
)
from annotate.campaigns import members as membership
from annotate.campaigns import setup
from annotate.campaigns.imports import batches
from annotate.core.errors import InvalidRanking
from annotate.labeling import assignment, judgements
from annotate.labeling.task_content import task_content
from annotate.models import Membership

ADMIN = (Membership.Role.ADMIN,)


@extend_schema(request=CampaignSerializer, responses={200: CampaignSerializer(many=True), 201: CampaignSerializer})
@api_view(["GET", "POST"])
def campaigns(request):
    """List the campaigns you belong to, or create one (staff only; you become its admin)."""
    if request.method == "GET":
        mine = access.visible_campaigns(request.user).order_by("-created_at")
        return Response(CampaignSerializer(mine, many=True).data)
    if not access.can_create_campaigns(request.user):
        raise PermissionDenied("Only staff can create campaigns.")
    serializer = CampaignSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    try:
        campaign = setup.create_campaign(request.user, **serializer.validated_data)
    except setup.InvalidSettings as exc:  # this endpoint answers field errors the way the serializer does
        return Response({exc.field or "non_field_errors": [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
    except IntegrityError:
        return Response({"slug": ["a campaign with this slug already exists."]}, status=status.HTTP_409_CONFLICT)
    return Response(CampaignSerializer(campaign).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=CampaignSerializer)
@api_view(["GET"])
def campaign_detail(request, slug):
    return Response(CampaignSerializer(access.campaign_for(request.user, slug)).data)


@extend_schema(request=MemberSerializer, responses={201: MemberSerializer})
@api_view(["POST"])
def members(request, slug):
    """Add an existing user to the campaign with a role, or change a member's role (campaign admins; see
    annotate.campaigns.members for whom a campaign admin may add, and the last-admin rule)."""
    campaign = access.campaign_for(request.user, slug, ADMIN)
    serializer = MemberSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    try:
        membership.add_existing_member(campaign, request.user, serializer.validated_data["username"], serializer.validated_data["role"])
    except membership.MemberError as exc:
        if exc.field == "username":  # the answer this endpoint has always given for an unknown name
            return Response({"username": [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
        raise
    return Response(serializer.data, status=status.HTTP_201_CREATED)


@extend_schema(
    request={"application/json": {"type": "array", "items": {"type": "object"}, "maxItems": batches.MAX_ROWS}},
    responses={201: ImportResultSerializer, 400: ImportResultSerializer},
    description="A JSON list of `{external_id, messages | text, context?, metadata?}`. All or nothing: "
    "a broken row rejects the batch and `errors` lists `{row, error}`.",
)
@api_view(["POST"])
def prompts(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    created = batches.import_prompts(campaign, request.data)
    return Response({"created": created, "errors": []}, status=status.HTTP_201_CREATED)


@extend_schema(
    request={"application/json": {"type": "array", "items": {"type": "object"}, "maxItems": batches.MAX_ROWS}},
    responses={201: ImportResultSerializer, 400: ImportResultSerializer},
    description="A JSON list of `{prompt: external_id, model: name, text, generation_params?}`. "
    "Tasks are built as prompts gain k unused responses (see annotate/task_building.py).",
)
@api_view(["POST"])
def responses(request, slug):
    campaign = access.campaign_for(request.user, slug, ADMIN)
    created, built = batches.import_responses(campaign, request.data)
    return Response({"created": created, "tasks_built": built, "errors": []}, status=status.HTTP_201_CREATED)


@extend_schema(responses={200: NextTaskSerializer, 204: OpenApiResponse(description="Nothing left for you.")})
@api_view(["GET"])
@parser_classes([JSONParser])  # DRF builds every configured parser per request; the hot path needs one
def next_task(request, slug):
    """Lease your next task (or get back the one you hold)."""
    campaign = access.campaign_for(request.user, slug, access.LABELING_ROLES)
    lease = assignment.next_task_for(request.user, campaign)
    if lease is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    content = task_content(lease.task)
    return Response(
        {
            "task_id": lease.task.pk,
            "prompt": {"messages": content.prompt.messages, "context": content.prompt.context},
            "responses": [{"id": r.id, "text": r.text} for r in content.responses],
            "lease_expires_at": lease.assignment.leased_until,
        }
    )


@extend_schema(
    request=JudgementInSerializer,
    responses={201: JudgementOutSerializer},
    parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
)
@api_view(["POST"])
@parser_classes([JSONParser])
def submit_judgement(request, task_id):
    """Submit your ranking of a task leased to you. A replay with the same Idempotency-Key returns the same judgement."""
    task = access.task_for_labeler(request.user, task_id)
    data = request.data
    # Only the shape here: judgements.submit checks every field (JudgementInSerializer documents them).
    if not isinstance(data, dict) or "ranking" not in data:
        raise InvalidRanking('Send a JSON object with a "ranking" (groups of response ids, best first).', field="ranking")
    submission = judgements.submit(
        request.user,
        task,
        data["ranking"],
        rationale=data.get("rationale", ""),
        flags=data.get("flags"),
        ratings=data.get("ratings"),
        time_spent_ms=data.get("time_spent_ms"),
        key=request.headers.get("Idempotency-Key") or None,
    )
    return Response(judgement_body(submission.judgement), status=status.HTTP_201_CREATED)


@extend_schema(request=None, responses={204: None})
@api_view(["POST"])
def skip_task(request, task_id):
    task = access.task_for_labeler(request.user, task_id)
    assignment.skip(request.user, task)
    return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(responses=ProgressSerializer)
@api_view(["GET"])
def progress(request, slug):
    campaign = access.campaign_for(request.user, slug)
    labeler = request.user if access.labels_in(campaign) else None
    return Response(assignment.progress(campaign, labeler))


def judgement_body(judgement) -> dict:
    return {
        "id": judgement.pk,
        "task_id": judgement.task_id,
        "ranking": judgement.ranking,
        "rationale": judgement.rationale,
        "flags": judgement.flags,
        "ratings": judgement.ratings,
        "time_spent_ms": judgement.time_spent_ms,
        "is_surplus": judgement.is_surplus,
        "created_at": judgement.created_at,
    }
