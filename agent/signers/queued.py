"""The `queued` signer: nobody seals yet. The invoice is stored durably as a draft (202, no
security elements, never a receipt) and sealed by the first signer that returns
(AgentService.seal_drafts)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..journal import Journal

if TYPE_CHECKING:
    from ..journal import SealJob, SealOutcome


class QueuedSigner:
    name = "queued"
    answers_retries = False
    keeps_drafts = True
    online = False

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def seal(self, job: "SealJob") -> "SealOutcome":
        return await asyncio.wrap_future(self.journal.run_in_writer(lambda conn: self.journal.queue_draft(conn, job)))

    def state(self) -> str:
        return "available"

    def health(self) -> dict[str, Any]:
        return {}
