"""Phase 1 requests waiting for their confirm or cancel (table emcf_pending, migration 0009_emcf).

States: pending → confirming → confirmed, or pending → cancelled / expired. A pending request
past its `expires_at` counts as expired wherever it is read. `confirming` is set before the seal
and stays when the seal's outcome is unknown (a lost cloud answer): such a request can neither
expire nor be cancelled, only confirmed again (the seal is exactly once per request_id).

Writes run on connections of their own (`PendingWriter`), one transaction each, so the pending
limit's count and the insert are one transaction, and so are a confirm's checks and its claim. A
write runs right on the event loop when SQLite's write lock is free at once (it then takes tens
of microseconds, no fsync), and in a thread when another writer holds the lock (the journal's
writer or the sealing process, mid-commit): the loop never waits for a lock. Those connections
commit with `synchronous=NORMAL`: a pending request survives a crash of the daemon (the WAL is
written before the answer) but not always a power cut before the next checkpoint — and losing
one costs nothing, since nothing was sealed: the client's confirm is refused and it submits
again. What must survive everything is the seal itself, committed by the journal (fsync) under
request_id `emcf-{uid}`; the journal is therefore the authority on "was it sealed?": a request
whose seal is in the journal is never cancelled or expired, whatever its recorded state. So a
two-phase sale costs one fsync, like `POST /v1/invoices`. Reads use the journal's reader.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson

from ..store import emcf as store, invoices, tx
from . import mapping
from .mapping import EmcfError

# The DGI allows about ten pending requests per point of sale (here: per API key).
MAX_PENDING = 10
# Finished requests (confirmed, cancelled, expired) are kept this long, so a confirm repeated
# after a lost answer is still answered from them; then they are deleted.
KEEP_SECONDS = 7 * 24 * 3600
# How often a phase 1 deletes the requests finished more than KEEP_SECONDS ago: a scan of the
# table that need not run at every sale (it used to: a DELETE in each phase 1 transaction).
FORGET_EVERY_SECONDS = 60
OPEN_STATES = ("pending", "confirming")


@dataclass(frozen=True)
class Pending:
    uid: str
    key_name: str
    request_id: str
    request_json: str
    answer: str
    total: str
    vtotal: str
    state: str
    created_at: str
    expires_at: float
    invoice_id: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Pending":
        return cls(uid=row["uid"], key_name=row["key_name"], request_id=row["request_id"],
                   request_json=row["request"], answer=row["answer"], total=row["total"],
                   vtotal=row["vtotal"], state=row["state"], created_at=row["created_at"],
                   expires_at=row["expires_at"], invoice_id=row["invoice_id"])

    def request(self) -> dict[str, Any]:
        """The InvoiceRequest recorded in phase 1 (JSON form), parsed when a confirm needs it."""
        return orjson.loads(self.request_json)

    def effective_state(self, now: float) -> str:
        return "expired" if self.state == "pending" and now >= self.expires_at else self.state


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


class PendingWriter:
    """The pending requests' write connections (see the module's docstring), opened on first use
    and closed with the app: one for the event loop, which never waits for SQLite's write lock,
    and one for a thread, which does."""

    def __init__(self) -> None:
        self._now: sqlite3.Connection | None = None  # used on the event loop only
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.forgotten_at = 0.0  # when finished requests were last deleted (FORGET_EVERY_SECONDS)

    def run_now(self, db_path, fn) -> tuple[bool, Any]:
        """(True, fn's result) when the write could run at once on the calling (event loop)
        thread; (False, None) when another writer holds the lock: then use `run` in a thread."""
        if self._now is None:
            self._now = store.open_writer(db_path, wait=False)
        conn = self._now
        if not store.begin_now(conn):
            return False, None
        try:
            result = fn(conn)
            tx.commit(conn)
        except BaseException:
            tx.rollback_quietly(conn)
            raise
        return True, result

    def run(self, db_path, fn):
        with self._lock:
            if self._conn is None:
                self._conn = store.open_writer(db_path)
            with tx.immediate(self._conn) as conn:
                return fn(conn)

    def close(self) -> None:
        with self._lock:
            for conn in (self._conn, self._now):
                if conn is not None:
                    conn.close()
            self._conn = self._now = None


@dataclass(frozen=True)
class Confirming:
    """What `begin_confirm` found: the request (None: unknown to this key), the time it was
    judged at, whether this confirm claimed it, and the invoice already sealed for it."""
    found: Pending | None
    now: float
    claimed: bool
    sealed_id: str | None


class PendingStore:
    def __init__(self, journal, lifetime: float, writer: PendingWriter, clock=time.time) -> None:
        self._journal = journal
        self._lifetime = lifetime
        self._writer = writer
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    async def _write(self, fn):
        done, result = self._writer.run_now(self._journal.db_path, fn)
        if done:
            return result
        return await asyncio.to_thread(self._writer.run, self._journal.db_path, fn)

    # ---------------------------------------------------------------- reads
    def get(self, uid: str, key_name: str) -> Pending | None:
        """The request `uid` of this key (another key's request is unknown to it)."""
        row = store.get(self._journal.reader, uid, key_name)
        return Pending.from_row(row) if row else None

    def open_requests(self, key_name: str) -> list[dict[str, str]]:
        """[{uid, date}] of this key's requests still waiting for their confirm, oldest first."""
        rows = store.open_of_key(self._journal.reader, key_name, self._clock())
        return [{"uid": r["uid"], "date": r["created_at"]} for r in rows]

    # ---------------------------------------------------------------- writes
    async def add(self, *, uid: str, key_name: str, request_id: str, request: dict[str, Any], answer: str,
                  total: str, vtotal: str) -> None:
        """Record a phase 1 request; refused when the key already has MAX_PENDING open ones."""
        now = self._clock()

        forget = now - self._writer.forgotten_at >= FORGET_EVERY_SECONDS

        def insert(conn: sqlite3.Connection) -> None:
            if forget:
                store.forget_finished_before(conn, now - KEEP_SECONDS)
            count = store.count_open(conn, key_name, now)
            if count >= MAX_PENDING:
                raise EmcfError(mapping.TOO_MANY_PENDING,
                                f"{count} requests are waiting for their confirm (at most {MAX_PENDING} per point "
                                "of sale): confirm or cancel them, or wait for them to expire", 429)
            stamp = _iso_now()
            store.insert(conn, uid=uid, key_name=key_name, request_id=request_id,
                         request_json=orjson.dumps(request).decode(), answer=answer, total=total,
                         vtotal=vtotal, created_at=stamp, expires_at=now + self._lifetime)

        await self._write(insert)
        if forget:
            self._writer.forgotten_at = now

    def expires_at(self, now: float) -> float:
        return now + self._lifetime

    async def begin_confirm(self, uid: str, key_name: str, total: Decimal, vtotal: Decimal) -> "Confirming":
        """One transaction for a confirm: the request of this key, its state, and — when it can be
        confirmed with these totals — its claim (→ confirming) and the invoice the journal may
        already hold for it (a confirm that crashed after its seal). The journal's writer commits
        under the same lock, so the check and the claim see its latest seal."""
        now = self._clock()

        def check_and_claim(conn: sqlite3.Connection) -> Confirming:
            row = store.get(conn, uid, key_name)
            if row is None:
                return Confirming(None, now, False, None)
            found = Pending.from_row(row)
            state = found.effective_state(now)
            if state in ("cancelled", "expired", "confirmed") or (total, vtotal) != (Decimal(found.total), Decimal(found.vtotal)):
                return Confirming(found, now, False, None)
            if store.claim(conn, uid, now, _iso_now()) == 0:  # pragma: no cover - checked above, same transaction
                return Confirming(found, now, False, None)
            return Confirming(found, now, True, invoices.sealed_id_for_request(conn, found.request_id))

        return await self._write(check_and_claim)

    async def release(self, uid: str) -> None:
        """confirming → pending: the seal was refused and nothing was sealed."""
        await self._set(uid, "pending", "confirming")

    async def confirmed(self, uid: str, invoice_id: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            store.confirm(conn, uid, invoice_id, _iso_now())

        await self._write(update)

    async def cancel(self, uid: str) -> bool:
        """pending (not expired) → cancelled; False when it was not pending any more."""
        now = self._clock()

        def update(conn: sqlite3.Connection) -> int:
            return store.cancel(conn, uid, now, _iso_now())

        return await self._write(update) > 0

    async def expire(self, uid: str) -> None:
        now = self._clock()

        def update(conn: sqlite3.Connection) -> None:
            store.expire(conn, uid, now, _iso_now())

        await self._write(update)

    async def _set(self, uid: str, state: str, from_state: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            store.move(conn, uid, from_state, state, _iso_now())

        await self._write(update)
