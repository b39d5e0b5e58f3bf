"""DRF serializers: validate at the edge; the service functions do the writes."""
from __future__ import annotations

from rest_framework import serializers

from annotate.labeling.validation import ALLOWED_FLAGS, MAX_FLAGS, MAX_RANKING_IDS, MAX_RATED_RESPONSES, MAX_RATIONALE, MAX_TIME_SPENT_MS
from annotate.models import Campaign, Membership


class CampaignSerializer(serializers.ModelSerializer):
    class Meta:
        model = Campaign
        fields = ["name", "slug", "instructions", "task_type", "responses_per_task", "overlap", "lease_seconds", "status", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"slug": {"validators": []}, "responses_per_task": {"min_value": 2, "max_value": 8}, "overlap": {"min_value": 1, "max_value": 100}, "lease_seconds": {"min_value": 10, "max_value": 7 * 24 * 3600}}


class MemberSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class ResponseOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()


class PromptOutSerializer(serializers.Serializer):
    messages = serializers.JSONField()
    context = serializers.JSONField()  # type: ignore[assignment]  # a declared field; the stubs see the base class's attribute of that name


class NextTaskSerializer(serializers.Serializer):
    task_id = serializers.IntegerField()
    prompt = PromptOutSerializer()
    responses = ResponseOutSerializer(many=True)
    lease_expires_at = serializers.DateTimeField()


class JudgementInSerializer(serializers.Serializer):
    """Shape only, for the schema; `judgements.submit` checks every field (the limits are validation's)."""

    ranking = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(), min_length=1),
        min_length=1, max_length=MAX_RANKING_IDS,
        help_text=f"Groups of response ids, best first: [[3], [5, 7], [2]]. A group of several is a tie. At most {MAX_RANKING_IDS} ids in all.",
    )
    rationale = serializers.CharField(required=False, allow_blank=True, max_length=MAX_RATIONALE, trim_whitespace=False)
    flags = serializers.ListField(child=serializers.ChoiceField(choices=sorted(ALLOWED_FLAGS)), required=False, max_length=MAX_FLAGS)
    ratings = serializers.JSONField(
        required=False,
        help_text=f'{{"<response id>": {{"<criterion>": value}}}} on the campaign\'s criteria; at most {MAX_RATED_RESPONSES} responses.',
    )
    time_spent_ms = serializers.IntegerField(required=False, min_value=0, max_value=MAX_TIME_SPENT_MS, allow_null=True)


class JudgementOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    task_id = serializers.IntegerField()
    ranking = serializers.JSONField()
    rationale = serializers.CharField()
    flags = serializers.JSONField()
    ratings = serializers.JSONField()
    time_spent_ms = serializers.IntegerField(allow_null=True)
    is_surplus = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class ImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    tasks_built = serializers.IntegerField(required=False)
    errors = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]  # a declared field; the stubs see the base class's attribute of that name


class ProgressSerializer(serializers.Serializer):
    tasks = serializers.IntegerField()
    open_tasks = serializers.IntegerField()
    complete_tasks = serializers.IntegerField()
    judgements_needed = serializers.IntegerField()
    judgements_received = serializers.IntegerField()
    labeler_submitted = serializers.IntegerField(required=False)
