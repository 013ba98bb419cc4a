"""Domain errors of the agent. The API layer maps each to one RFC 9457 problem type."""
from __future__ import annotations


class AgentError(Exception):
    status = 500
    type = "about:blank"
    title = "Internal error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInvoice(AgentError):
    status = 422
    type = "/problems/invalid-invoice"
    title = "The invoice is not valid"


class IdempotencyConflict(AgentError):
    status = 409
    type = "/problems/request-id-reused"
    title = "request_id already used with a different body"


class SealingBlocked(AgentError):
    """No signer can seal: sales must halt (health says `blocked`)."""

    status = 503
    type = "/problems/sealing-blocked"
    title = "Sealing is blocked"

    def __init__(self, detail: str, reason: str, **extra: object) -> None:
        super().__init__(detail, reason=reason, **extra)
        self.reason = reason


class StorageFailure(AgentError):
    status = 503
    type = "/problems/storage-failure"
    title = "The journal could not be written"


class CloudError(Exception):
    """The cloud refused or could not be reached; `detail` is safe to show a technician.

    Raised by agent/cloud_client.py; defined here so that code which only catches it (the CLI's
    error boundary) need not import the HTTP client."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
