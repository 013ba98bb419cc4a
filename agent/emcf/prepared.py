"""A phase 1 invoice kept ready for its confirm: validated, computed and encoded once.

Phase 1 runs the same work as `POST /v1/invoices` before the seal (validation, the tax engine,
the canonical texts the seal assembles its forms from: `AgentService.prepare`). Its confirm
seals that very work instead of doing it again: the prepared form waits here, in memory, beside
the pending request that stays durable in SQLite. A confirm that finds none (after a restart,
after a refused seal, on another day) rebuilds it from the stored request, as before.

A prepared form is taken by the one confirm that seals with it: a SealJob is used once, and a
seal that fails may have been handed parts of it, so a confirm sent again rebuilds its own.
It is only valid on the day it was computed: the tax table in force is the day's, and a confirm
after midnight recomputes (and is refused if the totals changed).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fiscal.canonical import Fragments

from ..journal import SealJob

# Far more than the open requests of any outlet (10 per key); a bound, should confirms never come.
MAX_KEPT = 2000
PRUNE_EVERY_SECONDS = 60


@dataclass(frozen=True)
class Prepared:
    request: dict[str, Any]
    fingerprint: str
    lines: list[dict[str, Any]]
    totals: dict[str, Any]
    fragments: Fragments | None
    day: date  # the date whose tax table computed it
    expires_at: float

    @classmethod
    def of(cls, job: SealJob, day: date, expires_at: float) -> "Prepared":
        return cls(request=job.request, fingerprint=job.fingerprint, lines=job.lines, totals=job.totals,
                   fragments=job.fragments, day=day, expires_at=expires_at)

    def job(self) -> SealJob:
        """A fresh job (its own future) on the prepared parts."""
        return SealJob(request=self.request, fingerprint=self.fingerprint, lines=self.lines, totals=self.totals,
                       fragments=self.fragments)


class PreparedRequests:
    """uid → Prepared, for the requests of this process still waiting for their confirm."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Prepared] = {}
        self._pruned_at = 0.0

    def keep(self, uid: str, prepared: Prepared, now: float) -> None:
        # Requests that expire unconfirmed leave theirs here: dropped every minute or so.
        if now - self._pruned_at >= PRUNE_EVERY_SECONDS or len(self._by_uid) >= MAX_KEPT:
            self.forget_expired(now)
            self._pruned_at = now
            if len(self._by_uid) >= MAX_KEPT:  # still full of live ones: the oldest go first
                for old in list(self._by_uid)[: MAX_KEPT // 10]:
                    del self._by_uid[old]
        self._by_uid[uid] = prepared

    def take(self, uid: str) -> Prepared | None:
        return self._by_uid.pop(uid, None)

    def discard(self, uid: str) -> None:
        self._by_uid.pop(uid, None)

    def forget_expired(self, now: float) -> None:
        for uid in [u for u, p in self._by_uid.items() if p.expires_at <= now]:
            del self._by_uid[uid]

    def __len__(self) -> int:
        return len(self._by_uid)
