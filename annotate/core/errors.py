"""Domain errors. The edges (htmx views, the API) turn them into 4xx responses."""
from __future__ import annotations


class DomainError(Exception):
    """A request that breaks a rule of the domain. `status` is the HTTP status the edges use."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, errors: list | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors or []

    def as_dict(self) -> dict:
        body: dict = {"code": self.code, "detail": self.message}
        if self.field:
            body["field"] = self.field
        if self.errors:
            body["errors"] = self.errors
        return body


class InvalidRanking(DomainError):
    code = "invalid_ranking"


class NotLeased(DomainError):
    status = 403
    code = "not_leased"
    default_message = "This task is not leased to you: ask for the next task first."


class AlreadySubmitted(DomainError):
    status = 409
    code = "already_submitted"


class IdempotencyConflict(DomainError):
    status = 409
    code = "idempotency_key_reused"


class CampaignNotOpen(DomainError):
    status = 409
    code = "campaign_not_open"


class ImportRejected(DomainError):
    code = "import_rejected"


class LabelerPaused(DomainError):
    status = 403
    code = "labeler_paused"
