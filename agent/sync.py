"""The sync worker: moves the outbox (agent/outbox.py) to the cloud ledger, batch after batch,
in sealing order, exactly once.

It takes the oldest pending invoices, uploads them, and marks each with the cloud's answer; then
starts again from the oldest still pending — which is exactly where it stopped after a crash or
restart (an upload the cloud took but we never marked comes back as `duplicate`, which is fine).
"""
from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from . import outbox
from .cloud_client import CloudClient, CloudError
from .store.db import connect
from .store.bodies import unpack

log = logging.getLogger("stalela.sync")



@dataclass
class SyncStats:
    last_success: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    uploaded: int = 0
    running: bool = False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# The readers of the outbox's state (health, the CLI, reports) keep their names.
outbox_status = outbox.status
retry_quarantined = outbox.retry_quarantined


class SyncWorker:
    """Uploads the outbox. One owner; logs the first failure and the recovery, not every try."""

    def __init__(self, db_path, client: CloudClient, *, batch_size: int = 500, interval: float = 5.0,
                 attempts: int = 5, max_backoff: float = 60.0) -> None:
        self.db_path = db_path
        self.client = client
        self.batch_size = batch_size
        self.interval = interval
        self.attempts = attempts
        self.max_backoff = max_backoff
        self.stats = SyncStats()
        self._wake = asyncio.Event()
        self._conn = connect(db_path)  # marks answers (one transaction per batch)
        self._reader = connect(db_path)  # reads the next batch meanwhile: its own connection

    def close(self) -> None:
        self._conn.close()
        self._reader.close()

    def wake(self) -> None:
        self._wake.set()

    def _pending(self, after: int = 0) -> list[dict[str, Any]]:
        # Bodies are decompressed here, in the reading thread, not on the event loop: ≈ 10 µs
        # each, so ≈ 10 ms for 1,000, during which no sale's answer would leave the daemon.
        return [{"seq": r["seq"], "id": r["id"], "body": unpack(r["body"])}
                for r in outbox.take_batch(self._reader, self.batch_size, after)]

    def _mark(self, rows: list[sqlite3.Row], answer: dict[str, Any]) -> tuple[int, int]:
        try:
            marked = outbox.mark(self._conn, rows, answer)
        except outbox.BadAnswer as exc:
            raise CloudError(str(exc)) from None
        for invoice_id, reason in marked.quarantined:
            log.warning("invoice quarantined", extra={"event": "sync.quarantined", "invoice": invoice_id,
                                                      "reason": reason})
        return marked.done, len(marked.quarantined)

    def _failed(self, exc: CloudError) -> None:
        if self.stats.last_error is None:  # log the first failure, not every retry
            log.warning("sync failed; will retry", extra={"event": "sync.failed", "error": exc.detail})
        self.stats.last_error = exc.detail
        self.stats.last_error_at = _now()

    async def _upload(self, rows: list[sqlite3.Row]) -> dict[str, Any]:
        """Send one batch (with retries) and return the cloud's answer."""
        bodies = [r["body"] for r in rows]  # decompressed when read (_pending)
        async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(CloudError), reraise=True,
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=0.5, max=self.max_backoff) + wait_random(0, 0.5)):
            with attempt:
                try:
                    return await self.client.reconcile_raw(bodies)
                except CloudError as exc:
                    self._failed(exc)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _settled(self, rows: list[sqlite3.Row], done: int, quarantined: int, progress) -> None:
        self.stats.uploaded += done + quarantined
        self.stats.last_success = _now()
        if self.stats.last_error is not None:
            log.info("sync recovered", extra={"event": "sync.recovered"})
            self.stats.last_error = None
        if progress:
            progress(len(rows))

    async def drain(self, progress=None, *, until_empty: bool = True) -> int:
        """Upload pending invoices, batch after batch, in sealing order: all of them, or with
        `until_empty=False` (the daemon's loop) until a batch read was not full.

        Batch k+1 is never sent before the cloud answered batch k (the cloud checks each chain
        link against what it already holds), but the work around the upload overlaps it: while
        the cloud reconciles batch k, the next batch is read from the journal, and batch k's
        answers are written while batch k+1 travels. A crash anywhere leaves each invoice either
        marked or still pending; pending ones are sent again and come back `duplicate`.

        A batch that was not full means the outbox was caught up when it was read. The daemon's
        loop stops there: what was sealed during that upload goes with the next tick instead of
        in a batch of its own. While sales go on, the cloud answered so fast that the drain sent
        many small batches (median 46 invoices under load), each paying the cloud's transaction
        and HTTP call and the journal's marking commit; an invoice still waits at most one
        interval, as one sealed just after the outbox was found empty always did.
        """
        total = 0
        rows = await asyncio.to_thread(self._pending)
        marking: asyncio.Future | None = None
        try:
            while rows:
                upload = asyncio.ensure_future(self._upload(rows))
                caught_up = not until_empty and len(rows) < self.batch_size
                following = None if caught_up else asyncio.ensure_future(
                    asyncio.to_thread(self._pending, rows[-1]["seq"]))
                try:
                    answer = await upload
                except BaseException:
                    if following is not None:
                        following.cancel()
                    raise
                if marking is not None:
                    await marking  # answers are written in order, one batch at a time
                marking = asyncio.ensure_future(self._mark_and_count(rows, answer, progress))
                total += len(rows)
                rows = await following if following is not None else []
        finally:
            if marking is not None:
                await marking
        return total

    async def _mark_and_count(self, rows: list[sqlite3.Row], answer: dict[str, Any], progress) -> None:
        done, quarantined = await asyncio.to_thread(self._mark, rows, answer)
        self._settled(rows, done, quarantined, progress)

    async def run(self) -> None:
        """The daemon's loop: drain, then wait for new seals or the interval."""
        self.stats.running = True
        try:
            while True:
                try:
                    await self.drain(until_empty=False)
                except CloudError as exc:
                    self._failed(exc)
                except sqlite3.Error as exc:
                    log.error("sync could not read or mark the journal",
                              extra={"event": "sync.journal_error", "error": str(exc)})
                self._wake.clear()
                try:
                    # Jitter keeps a fleet of outlets from hammering the cloud in step after an outage.
                    await asyncio.wait_for(self._wake.wait(), self.interval * (0.8 + 0.4 * random.random()))
                except TimeoutError:
                    pass
        finally:
            self.stats.running = False
