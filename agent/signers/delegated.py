"""The `delegated` signer: the agent seals offline with the credential the cloud delegated to it.

Numbers come strictly in order from the credential's block, in the journal's sealing transaction
(agent/journal.py); the sealing process (agent/sealer.py), when it runs, does the same work on
the second core. Either way the journal's writer answers a retried request_id itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..journal import Journal
from .credentials import credential_status

if TYPE_CHECKING:
    from ..journal import SealJob, SealOutcome
    from ..sealer import SealerProcess


class DelegatedSigner:
    name = "delegated"
    answers_retries = True
    keeps_drafts = False
    online = False

    def __init__(self, journal: Journal, *, sealer: "SealerProcess | None" = None,
                 renew_below: int = 0, on_low: Callable[[], None] | None = None) -> None:
        self.journal = journal
        self.sealer = sealer
        self.renew_below = renew_below
        # Called when the active block runs low, so renewal starts now rather than at its next
        # interval (cheap and safe to call often).
        self.on_low = on_low

    async def seal(self, job: "SealJob") -> "SealOutcome":
        outcome = await (self.sealer or self.journal).submit_async(job)
        left = self.journal.numbers_left
        if self.on_low is not None and left is not None and left < self.renew_below:
            self.on_low()
        return outcome

    def state(self) -> str:
        return "available" if credential_status(self.journal.reader)["remaining"] > 0 else "blocked"

    def health(self) -> dict[str, Any]:
        return {"remaining_numbers": credential_status(self.journal.reader)["remaining"]}
