"""Domain errors of the cloud service. Each maps to one RFC 9457 problem type."""
from __future__ import annotations

PROBLEM_BASE = "https://stalela.cd/problems/"


class CloudError(Exception):
    """A refusal the caller can act on. `kind` names the problem type (docs/cloud-api.md)."""

    status = 400
    title = "Bad request"

    def __init__(self, kind: str, detail: str, *, status: int | None = None,
                 errors: list[dict[str, str]] | None = None):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.errors = errors
        if status is not None:
            self.status = status

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.kind


class NotFound(CloudError):
    status = 404
    title = "Not found"


class Conflict(CloudError):
    status = 409
    title = "Conflict"


class Invalid(CloudError):
    status = 422
    title = "Invalid request"


class Unauthorized(CloudError):
    status = 401
    title = "Unauthorized"


class Forbidden(CloudError):
    status = 403
    title = "Forbidden"


class DeadlinePassed(CloudError):
    """The caller's deadline passed before the seal could be committed: nothing was sealed, and
    this attempt never will be (a retry with a new deadline may seal it)."""

    status = 422
    title = "Deadline passed"


class DatabaseUnavailable(CloudError):
    """The ledger database does not answer (down, unreachable, out of connections). Nothing was
    changed by this request unless it was a seal whose commit was under way: a caller retries
    the same request (seals are idempotent by request_id)."""

    status = 503
    title = "Service Unavailable"

    def __init__(self) -> None:
        super().__init__("database_unavailable", "the ledger database does not answer; retry shortly")
