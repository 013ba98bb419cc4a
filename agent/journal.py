"""The journal: where invoices are sealed and kept.

One writer thread owns the write connection. Seal jobs queue up; the writer takes as many as are
waiting (up to `max_batch`) and seals them in ONE transaction — number allocation, signature,
chain link and outbox entry for each — then commits once (group commit: one fsync for the whole
batch). Only after COMMIT returns are the callers told. A failed commit rolls everything back, so
no number is consumed and no half-written invoice remains.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from fiscal.canonical import Fragments, compose
from fiscal.invoice import counters, sealed_invoice, security
from fiscal.protocol import GENESIS_HASH, chain_key, device_qr
from fiscal.seal import apply_signature, chain_hash

from . import outbox
from .errors import IdempotencyConflict, InvalidInvoice, SealingBlocked, StorageFailure
from .identity import OutletIdentity
from .signers.credentials import CredentialBook
from .store import repository, tx
from .store.bodies import pack, unpack
from .store.db import connect

log = logging.getLogger("stalela.journal")

CREDIT_TYPES = ("FA", "EA")


@dataclass
class SealJob:
    request: dict[str, Any]  # InvoiceRequest in JSON form
    fingerprint: str
    lines: list[dict[str, Any]]
    totals: dict[str, Any]
    future: Future = field(default_factory=Future)
    # Canonical texts of the request's parts, lines and totals (see fiscal.canonical.Fragments);
    # None for jobs rebuilt from storage (drafts, device recovery): they are encoded when sealed.
    fragments: Fragments | None = None
    # Set by Journal.submit_async: the event loop to answer on and its future (see _settle).
    waiter: tuple[Any, Any] | None = None


@dataclass
class WriterTask:
    """Any other write that must be serialized with sealing (e.g. a Z report): `fn(conn)` runs in
    its own IMMEDIATE transaction on the writer thread; its return value resolves the future."""

    fn: Any
    future: Future = field(default_factory=Future)


class SealOutcome:
    """What a signer answers: the invoice, and whether this request created it.

    `body_json` is the stored JSON text of the invoice (no `sync`) when the writer has it: the API
    answers with it instead of serializing the invoice again. From the sealing process only the
    text travels; `invoice` is then parsed from it on first use.
    """

    __slots__ = ("_invoice", "created", "body_json", "_status", "_mode")

    def __init__(self, invoice: dict[str, Any] | None, created: bool, body_json: str | None = None, *,
                 status: str | None = None, mode: str | None = None) -> None:
        if invoice is None and body_json is None:
            raise ValueError("a seal outcome needs the invoice or its JSON text")
        self._invoice = invoice
        self.created = created  # False when an earlier identical request was answered again
        self.body_json = body_json
        self._status = status
        self._mode = mode

    @property
    def invoice(self) -> dict[str, Any]:
        if self._invoice is None:
            self._invoice = json.loads(self.body_json)
        return self._invoice

    @property
    def status(self) -> str:
        return self._status or self.invoice.get("status")

    @property
    def mode(self) -> str:
        return self._mode or self.invoice["mode"]


@dataclass(frozen=True)
class BatchResult:
    """What a sealed batch changed in the journal's counters."""

    created: int
    numbers_left: int | None
    clock_skew: float


class _Rehearsal(Exception):
    """Raised to roll a rehearsal seal back (see Journal.rehearse)."""


def _answer_waiters(items: list) -> None:
    for waiter, outcome, error in items:
        if waiter.done():  # the caller went away (e.g. the POS hung up); the seal stands
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(outcome)


def _reference_code(request: dict[str, Any]) -> str | None:
    """The original invoice's code for a credit note (indexed: bodies are compressed)."""
    if request.get("type") in CREDIT_TYPES and request.get("reference"):
        return request["reference"].get("code")
    return None


def _now_utc() -> datetime:
    return datetime.now(timezone.utc)


def stored_request(conn: sqlite3.Connection, request_id: str, fingerprint: str) -> sqlite3.Row | None:
    """The one idempotency lookup, used by every path (the API, the writer, the device signer):
    the stored row of this request_id (sealed, or a queued draft), or None. Raises
    IdempotencyConflict when the request_id was used with another body."""
    row = repository.find_request(conn, request_id)
    if row is not None and row["request_hash"] != fingerprint:
        raise IdempotencyConflict(f"request_id {request_id!r} was already used for a different invoice")
    return row


class Journal:
    def __init__(self, db_path: Path, identity: OutletIdentity, agent_key, tz, *,
                 isf: str = "", max_batch: int = 64, clock=_now_utc) -> None:
        self.db_path = db_path
        self.identity = identity
        self.isf = isf or identity.isf
        self._key = agent_key
        self._tz = tz
        self._clock = clock
        self._max_batch = max_batch
        self._chain_key = chain_key("delegated", outlet_id=identity.outlet_id)
        self._queue: queue.SimpleQueue[SealJob | None] = queue.SimpleQueue()
        self._wconn = connect(db_path)
        self.reader = connect(db_path)
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._started = False
        self.last_clock_skew: float = 0.0
        # The delegated signer's credentials: which number comes next, closures, new arrivals.
        self.credentials = CredentialBook(db_path, agent_key)
        self.sealed_count = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if not self._started:
            self._thread.start()
            self._started = True

    def close(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._started = False
        self._wconn.close()
        self.reader.close()

    @property
    def tz(self):
        """The outlet's zone: invoices are stamped in its local time."""
        return self._tz

    def writer_alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ writing
    def submit(self, job: SealJob | WriterTask) -> Future:
        self._queue.put(job)
        return job.future

    def submit_async(self, job: SealJob):
        """Queue a seal job from a coroutine; await the returned asyncio future.

        The writer answers a whole group commit with ONE call into the event loop instead of
        one wake-up per invoice (see _settle)."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        job.waiter = (loop, waiter)
        self._queue.put(job)
        return waiter

    def rehearse(self, job: SealJob, timeout: float = 10.0) -> None:
        """Seal `job` on the writer thread and roll it back: nothing stays, no number is used.

        The daemon does this once before READY so the first real invoice after a restart does
        not pay the writer's first-use costs (statements, pages, the parsed credential)."""
        journal_log = logging.getLogger("stalela.journal")

        def seal_and_undo(conn: sqlite3.Connection) -> None:
            level = journal_log.level
            journal_log.setLevel(logging.ERROR)  # a rehearsal must not log an activation
            try:
                self._seal_one(conn, job)
            finally:
                journal_log.setLevel(level)
            raise _Rehearsal  # _run_task rolls the transaction back

        left = self.credentials.numbers_left
        try:
            self.run_in_writer(seal_and_undo).result(timeout)
        except _Rehearsal:
            pass
        finally:
            self.credentials.numbers_left = left  # the rehearsal's number was not used

    def run_in_writer(self, fn) -> Future:
        """Run `fn(conn)` in a transaction of its own on the writer thread (see WriterTask)."""
        return self.submit(WriterTask(fn))

    def _run_task(self, task: WriterTask) -> None:
        conn = self._wconn
        try:
            tx.begin_immediate(conn)
            result = task.fn(conn)
            tx.commit(conn)
        except BaseException as exc:
            tx.rollback_quietly(conn)
            task.future.set_exception(exc)
            return
        task.future.set_result(result)

    @property
    def signing_key(self):
        """The agent's key, for documents the agent signs itself (reports, closures)."""
        return self._key

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if isinstance(job, WriterTask):
                self._run_task(job)
                continue
            batch = [job]
            stop = False
            task = None
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if isinstance(nxt, WriterTask):
                    task = nxt  # runs right after this batch, keeping queue order
                    break
                batch.append(nxt)
            self._commit_batch(batch)
            if task is not None:
                self._run_task(task)
            if stop:
                return

    @property
    def numbers_left(self) -> int | None:
        """Numbers left in the active credential after the last seal (a hint for renewal)."""
        return self.credentials.numbers_left

    def seal_batch(self, batch: list[SealJob]) -> BatchResult:
        """Seal a batch in ONE transaction and answer each job (its future or waiter).

        Called on the writer thread, and by the sealing process on its own journal: the counts
        it returns are what that process reports back (see `count_remote`)."""
        before = self.sealed_count
        self._commit_batch(batch)
        return BatchResult(created=self.sealed_count - before, numbers_left=self.numbers_left,
                           clock_skew=self.last_clock_skew)

    def count_remote(self, result: "BatchResult") -> None:
        """Account for a batch the sealing process sealed on its own connection."""
        self.credentials.numbers_left = result.numbers_left
        self.last_clock_skew = result.clock_skew
        self.sealed_count += result.created

    def warm_up(self) -> None:
        """First-use costs (page reads, the parsed credential, the key) before a first seal.
        Writes nothing."""
        self.credentials.warm_up(self._wconn)
        repository.all_chains(self._wconn)
        self._key.sign(b"warm-up")

    def _commit_batch(self, batch: list[SealJob]) -> None:
        conn = self._wconn
        outcomes: list[tuple[SealJob, SealOutcome | None, Exception | None]] = []
        try:
            tx.begin_immediate(conn)
            for job in batch:
                tx.savepoint(conn, "job")
                try:
                    outcome = self._seal_one(conn, job)
                except (IdempotencyConflict, InvalidInvoice, SealingBlocked) as exc:
                    tx.rollback_to(conn, "job")
                    outcomes.append((job, None, exc))
                    continue
                tx.release(conn, "job")
                outcomes.append((job, outcome, None))
            tx.commit(conn)
        except Exception as exc:  # disk full, I/O error, corrupted file...
            tx.rollback_quietly(conn)
            log.error("journal commit failed", extra={"event": "journal.commit_failed",
                                                       "error": str(exc), "batch": len(batch)})
            failure = StorageFailure(f"the journal could not be written: {exc}")
            self._settle([(job, None, failure) for job in batch])
            return
        self.sealed_count += sum(1 for _, outcome, _ in outcomes if outcome is not None and outcome.created)
        self._settle(outcomes)

    @staticmethod
    def _settle(outcomes: list[tuple[SealJob, SealOutcome | None, BaseException | None]]) -> None:
        """Tell every caller of a committed (or failed) batch: concurrent futures directly, and
        asyncio waiters with one call_soon_threadsafe per event loop for the whole batch."""
        by_loop: dict[Any, list] = {}
        for job, outcome, error in outcomes:
            if job.waiter is not None:
                by_loop.setdefault(job.waiter[0], []).append((job.waiter[1], outcome, error))
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(outcome)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_answer_waiters, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _seal_one(self, conn: sqlite3.Connection, job: SealJob) -> SealOutcome:
        req = job.request
        earlier = self._answer_again(conn, job)
        if earlier is not None:
            return earlier
        self._check_discarded(conn, req["request_id"])
        if repository.cloud_intent_open(conn, req["request_id"]):
            raise SealingBlocked(
                "this request was sent to the cloud signer and its answer was lost; only the cloud can "
                "tell whether it was sealed: retry the same request_id once the cloud is reachable",
                reason="cloud_outcome_unknown")
        if req["type"] in CREDIT_TYPES:
            self._check_credit_note(conn, req, job.totals)

        chain = repository.chain_head(conn, self._chain_key)
        prev_hash = chain["last_hash"] if chain else GENESIS_HASH
        last_ts = datetime.fromisoformat(chain["last_timestamp"]) if chain and chain["last_timestamp"] else None
        counters_by_type = json.loads(chain["type_counters"]) if chain else {}

        now = self._clock()
        if last_ts is not None and now < last_ts:
            # The box's clock went backwards: never sign earlier than the last invoice.
            self.last_clock_skew = (last_ts - now).total_seconds()
            now = last_ts
        cred, number = self.credentials.allocate(conn, now)

        counters_by_type[req["type"]] = counters_by_type.get(req["type"], 0) + 1
        local = now.astimezone(self._tz).replace(microsecond=0)
        invoice = sealed_invoice(
            req, invoice_id=str(uuid.uuid4()), mode="delegated", merchant_nif=self.identity.merchant_nif,
            outlet_id=self.identity.outlet_id, isf=self.isf, lines=job.lines, totals=job.totals,
            security=security(authority_id=cred.id, fiscal_number=number, timestamp=local.isoformat(),
                              counters=counters(counters_by_type[req["type"]], number, req["type"])),
            prev_hash=prev_hash)
        apply_signature(invoice, self._key, cred, credential_part=self.credentials.qr_part(cred), fragments=job.fragments)
        body = compose(invoice, job.fragments)  # canonical: `stalela verify` hashes it as stored
        stamp = now.isoformat()
        repository.insert_invoice(conn, {
            "id": invoice["id"], "request_id": req["request_id"], "request_hash": job.fingerprint,
            "status": "sealed", "mode": "delegated", "chain_key": self._chain_key, "authority_id": cred.id,
            "fiscal_number": number, "type": req["type"], "code": invoice["security"]["code"],
            "total": job.totals["total"], "sealed_at": local.isoformat(), "created_at": stamp,
            "hash": invoice["chain"]["hash"], "prev_hash": prev_hash, "body": pack(body),
            "reference_code": _reference_code(req), "sync_state": outbox.PENDING})
        repository.advance_chain(conn, self._chain_key, invoice["chain"]["hash"], number, now.isoformat(),
                                 json.dumps(counters_by_type))
        return SealOutcome(invoice, created=True, body_json=body, status="sealed", mode="delegated")

    def _answer_again(self, conn: sqlite3.Connection, job: SealJob, *, intent_table: str | None = None,
                      keep_draft: bool = False) -> SealOutcome | None:
        """Exactly-once per request: the stored answer for this request_id (409 if the body
        differs), or None when it must be sealed now. A queued draft of this very request is
        being sealed now: it is removed in this transaction (unless `keep_draft`). A pending
        intent for it is settled too."""
        request_id = job.request["request_id"]
        row = stored_request(conn, request_id, job.fingerprint)
        if row is None:
            return None
        if row["status"] == "queued" and not keep_draft:
            repository.delete_draft(conn, request_id)
            return None
        if intent_table is not None:
            repository.settle_intent(conn, intent_table, request_id)
        return SealOutcome(json.loads(unpack(row["body"])), created=False)

    @staticmethod
    def _check_discarded(conn: sqlite3.Connection, request_id: str) -> None:
        gone = repository.discarded_request(conn, request_id)
        if gone is not None:
            raise IdempotencyConflict(
                f"request_id {request_id!r} was sealed long ago (invoice {gone['invoice_id']}, fiscal number "
                f"{gone['fiscal_number']}) and its local copy discarded after the cloud acknowledged it",
                reason="discarded")

    def _check_credit_note(self, conn: sqlite3.Connection, req: dict, totals: dict) -> None:
        code = req["reference"]["code"]
        original = repository.credit_note_original(conn, code)
        if original is None:
            raise InvalidInvoice(f"credit note refers to {code}, which is not a sealed invoice of this outlet",
                                 errors=[{"field": "reference.code", "message": "unknown original invoice"}])
        if original["type"] in CREDIT_TYPES:
            raise InvalidInvoice("a credit note cannot refer to another credit note",
                                 errors=[{"field": "reference.code", "message": "refers to a credit note"}])
        already = repository.credited_so_far(conn, code)
        limit = Decimal(original["total"]) - already
        if Decimal(totals["total"]) > limit:
            raise InvalidInvoice(
                f"credit note total {totals['total']} exceeds what is left to credit on the original ({limit})",
                errors=[{"field": "items", "message": f"credit exceeds the original invoice (at most {limit})"}])

    # ------------------------------------------------------------------ cloud mode
    def record_cloud_seal(self, conn: sqlite3.Connection, job: SealJob, invoice: dict[str, Any]) -> SealOutcome:
        """Store an invoice the cloud signer sealed (already in the cloud ledger: synced)."""
        req = job.request
        earlier = self._answer_again(conn, job, intent_table="cloud_intents")
        if earlier is not None:
            return earlier
        invoice = {k: v for k, v in invoice.items() if k != "sync"}
        sec = invoice["security"]
        key = chain_key("cloud", outlet_id=invoice["outlet_id"])
        now = _now_utc().isoformat()
        # Already in the cloud's ledger: it enters the outbox as settled, never to be uploaded.
        repository.insert_invoice(conn, {
            "id": invoice["id"], "request_id": req["request_id"], "request_hash": job.fingerprint,
            "status": "sealed", "mode": "cloud", "chain_key": key, "authority_id": sec["authority_id"],
            "fiscal_number": sec["fiscal_number"], "type": invoice["type"], "code": sec["code"],
            "total": invoice["totals"]["total"], "sealed_at": sec["timestamp"], "created_at": now,
            "hash": invoice["chain"]["hash"], "prev_hash": invoice["chain"]["prev_hash"],
            "body": pack(json.dumps(invoice, ensure_ascii=False, separators=(",", ":"))),
            "sync_state": outbox.ACCEPTED, "synced_at": now, "reference_code": _reference_code(req)})
        repository.advance_chain(conn, key, invoice["chain"]["hash"], sec["fiscal_number"], sec["timestamp"])
        repository.settle_intent(conn, "cloud_intents", req["request_id"])
        self.sealed_count += 1
        return SealOutcome(invoice, created=True)

    # ------------------------------------------------------------------ queued drafts
    def queue_draft(self, conn: sqlite3.Connection, job: SealJob) -> SealOutcome:
        """Store an unsealed draft durably (policy `queued`): no security elements, never a receipt."""
        req = job.request
        earlier = self._answer_again(conn, job, keep_draft=True)
        if earlier is not None:
            return earlier
        draft = {"id": str(uuid.uuid4()), "request_id": req["request_id"], "status": "queued",
                 "request": req, "lines": job.lines, "totals": job.totals,
                 "queued_at": _now_utc().isoformat()}
        # A draft is no outbox entry: it is enqueued when a signer seals it.
        repository.insert_invoice(conn, {
            "id": draft["id"], "request_id": req["request_id"], "request_hash": job.fingerprint,
            "status": "queued", "type": req["type"], "total": job.totals["total"], "created_at": draft["queued_at"],
            "body": pack(json.dumps(draft, ensure_ascii=False, separators=(",", ":"))), "sync_state": outbox.DRAFT})
        return SealOutcome(draft, created=True)

    # ------------------------------------------------------------------ device mode
    def record_device_seal(self, conn: sqlite3.Connection, job: SealJob, device: dict[str, Any]) -> SealOutcome:
        """Store an invoice the MCF normalized, with its security elements exactly as returned.

        `device` holds the 38h answer: fc, tc, ft, dt (AAAAMMJJHHmmss, device local time), mid,
        nif, fn, sig. Call inside a writer transaction (`run_in_writer`); removes the intent.
        """
        req = job.request
        earlier = self._answer_again(conn, job, intent_table="device_intents")
        if earlier is not None:
            return earlier
        key = chain_key("device", outlet_id=self.identity.outlet_id, authority_id=device["mid"])
        chain = repository.chain_head(conn, key)
        prev_hash = chain["last_hash"] if chain else GENESIS_HASH
        local = datetime.strptime(device["dt"], "%Y%m%d%H%M%S").replace(tzinfo=self._tz)
        fc, tc = int(device["fc"]), int(device["tc"])
        # The MCF's security elements exactly as it returned them: counters, MID, SIG, DT, QR.
        invoice = sealed_invoice(
            req, invoice_id=str(uuid.uuid4()), mode="device", merchant_nif=device["nif"],
            outlet_id=self.identity.outlet_id, isf=self.isf, lines=job.lines, totals=job.totals,
            security=security(authority_id=device["mid"], code=device["sig"], fiscal_number=tc,
                              timestamp=local.isoformat(), counters=counters(fc, tc, device["ft"]),
                              qr_payload=device_qr(device["mid"], device["sig"], device["nif"], device["dt"])),
            prev_hash=prev_hash)
        invoice["chain"]["hash"] = chain_hash(invoice, trusted=True)
        body = json.dumps(invoice, ensure_ascii=False, separators=(",", ":"))
        repository.insert_invoice(conn, {
            "id": invoice["id"], "request_id": req["request_id"], "request_hash": job.fingerprint,
            "status": "sealed", "mode": "device", "chain_key": key, "authority_id": device["mid"],
            "fiscal_number": tc, "type": req["type"], "code": device["sig"], "total": job.totals["total"],
            "sealed_at": local.isoformat(), "created_at": _now_utc().isoformat(), "hash": invoice["chain"]["hash"],
            "prev_hash": prev_hash, "body": pack(body), "reference_code": _reference_code(req),
            "sync_state": outbox.PENDING})
        repository.advance_chain(conn, key, invoice["chain"]["hash"], tc, local.isoformat())
        repository.settle_intent(conn, "device_intents", req["request_id"])
        self.sealed_count += 1
        return SealOutcome(invoice, created=True)

    # ------------------------------------------------------------------ credentials
    def add_credential(self, cred) -> bool:
        """Store a credential fetched from the cloud (as `ready`)."""
        return self.credentials.add(cred)
