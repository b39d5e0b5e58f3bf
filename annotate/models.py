"""Arbiter's data: campaigns, prompts, model versions, responses, tasks, assignments, judgements.

The counters on Task (`remaining`, `judgements_received`) are set when a task is built
(`annotate.campaigns.task_building`, `annotate.runs.generation`) and afterwards only changed by
`annotate.labeling.assignment` (leases, skips, reclaims, a new overlap, a task turned gold) and
`annotate.labeling.judgements`, under a row lock on the task.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Campaign(models.Model):
    class TaskType(models.TextChoices):
        PAIRWISE = "pairwise", "Pairwise (A/B)"
        RANKING = "ranking", "k-way ranking"

    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        PAUSED = "paused"
        CLOSED = "closed"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    instructions = models.TextField(blank=True, help_text="Markdown shown to labelers.")
    task_type = models.CharField(max_length=16, choices=TaskType.choices, default=TaskType.PAIRWISE)
    responses_per_task = models.PositiveSmallIntegerField(default=2)
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Judgements wanted per task.")
    lease_seconds = models.PositiveIntegerField(default=600)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    criteria = models.JSONField(
        default=list, blank=True, help_text='Per-response ratings asked beside the ranking: [{"name", "label", "min", "max"}].'
    )
    gold_rate = models.FloatField(default=0.0, help_text="Share of each labeler's stream that is gold tasks (0 to 1).")
    gold_min_accuracy = models.FloatField(default=0.0, help_text="Labelers below this gold accuracy are paused (0: never).")
    gold_min_answered = models.PositiveSmallIntegerField(default=5, help_text="Gold answers needed before the threshold applies.")
    markdown_text = models.BooleanField(
        default=True, help_text="Show prompts and responses as sanitised Markdown (code, tables, lists); off: plain text."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    # Set by access.campaign_for on the instance it returns (no database column): the caller's role and pause flag.
    user_role: str
    user_paused: bool

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="campaign_gold_rate_0_to_1"),
            models.CheckConstraint(condition=Q(responses_per_task__gte=2, responses_per_task__lte=8), name="campaign_k_2_to_8"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="campaign_overlap_positive"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=10), name="campaign_lease_at_least_10s"),
            models.CheckConstraint(
                condition=~Q(task_type="pairwise") | Q(responses_per_task=2), name="campaign_pairwise_is_k2"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin"
        RESEARCHER = "researcher"
        LABELER = "labeler"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    # Paused labelers get no tasks; their judgements are left out of exports and training by default.
    is_paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=200, blank=True)
    # The account was created by adding this member to this campaign: the campaign's admins may deactivate it
    # (see annotate.campaigns.members).
    created_account = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "user"], name="one_membership_per_campaign")]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} of {self.campaign}"


class Prompt(models.Model):
    # no index of its own: the unique (campaign, external_id) index serves lookups by campaign
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="prompts", db_index=False)
    external_id = models.CharField(max_length=200)
    messages = models.JSONField(help_text="Chat turns: [{role, content}, ...].")
    context = models.JSONField(default=list, blank=True, help_text="Retrieved passages shown beside the prompt.")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "external_id"], name="prompt_external_id_unique")]

    def __str__(self) -> str:
        return self.external_id


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        BASE = "base"
        POLICY = "policy"
        REWARD = "reward"
        ENDPOINT = "endpoint"  # an OpenAI-compatible server (annotate.runs.endpoints); settings in metadata

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POLICY)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    checkpoint_path = models.CharField(max_length=500, blank=True, help_text="Under ARTIFACTS_DIR, or absolute.")
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="models_made")
    round = models.PositiveIntegerField(null=True, blank=True, help_text="RLHF round that produced it (0: the base).")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Response(models.Model):
    # no index of its own: the (prompt, model_version) index serves lookups by prompt
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses", db_index=False)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="responses")
    text = models.TextField()
    generation_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["prompt", "model_version"])]


class Task(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    responses = models.ManyToManyField(Response, through="TaskResponse", related_name="tasks")
    priority = models.IntegerField(default=0)
    # Gold tasks have a known answer; they are served to every labeler (once) at the campaign's gold rate.
    is_gold = models.BooleanField(default=False)
    gold_ranking = models.JSONField(null=True, blank=True, help_text="The known answer: groups of response ids, best first.")
    judgements_needed = models.PositiveSmallIntegerField()
    judgements_received = models.PositiveIntegerField(default=0)
    # Slots not taken by an open lease or a counted judgement; a task is servable while > 0.
    remaining = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    # Set by access.task_for_labeler on the instance it returns (no database column): the caller's role.
    user_role: str

    class Meta:
        indexes = [
            # The queue: servable tasks of a campaign, highest priority first, then oldest.
            models.Index(
                fields=["campaign", "-priority", "id"], name="task_queue", condition=Q(remaining__gt=0)
            ),
        ]
        constraints = [models.CheckConstraint(condition=Q(remaining__gte=0), name="task_remaining_not_negative")]


class TaskResponse(models.Model):
    # no index of its own: the unique (task, response) and (task, position) indexes serve lookups by task
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="slots", db_index=False)
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(help_text="Display order, shuffled per task.")

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "response"], name="task_response_unique"),
            models.UniqueConstraint(fields=["task", "position"], name="task_position_unique"),
        ]


class Assignment(models.Model):
    class State(models.TextChoices):
        OPEN = "open"
        SUBMITTED = "submitted"
        EXPIRED = "expired"
        SKIPPED = "skipped"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    leased_at = models.DateTimeField()
    leased_until = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "labeler"], name="one_assignment_per_labeler")]
        indexes = [
            models.Index(fields=["leased_until"], name="open_leases", condition=Q(state="open")),
            models.Index(fields=["labeler", "campaign", "state"]),
        ]


class Judgement(models.Model):
    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="judgement")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="judgements")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judgements")
    ranking = models.JSONField(help_text="Groups of response ids, best first; a group of several is a tie.")
    rationale = models.TextField(blank=True)
    flags = models.JSONField(default=list, blank=True)
    ratings = models.JSONField(default=dict, blank=True, help_text='{"<response id>": {"<criterion>": value}}')
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)
    # Submitted after the lease lapsed and the task had meanwhile been fully served: kept, not counted.
    is_surplus = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["labeler", "idempotency_key"],
                name="judgement_idempotency_key",
                condition=Q(idempotency_key__isnull=False),
            )
        ]
        indexes = [models.Index(fields=["task", "created_at"])]


class Snapshot(models.Model):
    """A frozen export: a named, versioned file with its content hash, downloadable byte for byte."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="snapshots")
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField(help_text="1, 2, ... per campaign, in order of creation.")
    shape = models.CharField(max_length=16)
    format = models.CharField(max_length=16)
    filters = models.JSONField(default=dict, blank=True)
    path = models.CharField(max_length=500, help_text="Under ARTIFACTS_DIR.")
    content_hash = models.CharField(max_length=64)
    row_counts = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "name"], name="snapshot_name_unique")]

    def __str__(self) -> str:
        return f"{self.campaign.slug}/{self.name}"


class Run(models.Model):
    """A background job as people see it: what it is, who started it, how far it got, what it made."""

    class Kind(models.TextChoices):
        GENERATE = "generate"
        REWARD = "reward"
        PRIORITIZE = "prioritize"
        DRIFT = "drift"
        PPO = "ppo"
        SFT = "sft"
        DPO = "dpo"
        RLOO = "rloo"
        ROUND = "round"
        OPTIMIZE = "optimize"
        IMPORT = "import"
        SNAPSHOT = "snapshot"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.CASCADE, related_name="runs")
    params = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    queue_name = models.CharField(max_length=32, default="default")
    progress = models.FloatField(default=0.0, help_text="0 to 1.")
    progress_message = models.CharField(max_length=300, blank=True)
    log_tail = models.TextField(blank=True)
    artifacts = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True)
    task_result_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["campaign", "-created_at"]), models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class RunMetric(models.Model):
    """One point of a run's metric time series (loss, accuracy, reward, ...)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    step = models.IntegerField()
    name = models.CharField(max_length=100)
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["run", "name", "step"])]


class ApiToken(models.Model):
    """A user's API key, stored as its SHA-256 only: the key itself is shown once, when it is issued."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the key, hex.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"API token of user {self.user_id}"


class WorkerHeartbeat(models.Model):
    """A live `db_worker` process: its queues and the memory it offers, stamped every few seconds (annotate.jobs.workers)."""

    worker_id = models.CharField(max_length=200, unique=True, help_text="host:pid of the worker process.")
    queues = models.JSONField(default=list, help_text='The queues it takes tasks from ("*": all).')
    devices = models.JSONField(default=list, blank=True, help_text='CUDA devices: [{"name", "total", "free"}] in bytes; [] on the CPU.')
    host_total = models.BigIntegerField(default=0, help_text="Host RAM, bytes.")
    host_available = models.BigIntegerField(default=0, help_text="Host RAM available (MemAvailable), bytes.")
    bitsandbytes = models.BooleanField(default=False, help_text="bitsandbytes is installed and CUDA is there (4/8-bit loading).")
    deepspeed = models.BooleanField(default=False, help_text="deepspeed is installed and CUDA is there (ZeRO-2/3 training).")
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"worker {self.worker_id} ({', '.join(self.queues)})"
