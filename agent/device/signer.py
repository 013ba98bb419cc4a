"""Device mode: the MCF seals, the agent records exactly what it returns.

One `DeviceSigner` owns one `MCFClient` (not thread-safe) and one worker thread: every device
exchange (sealing, start-up recovery, the status poll) runs there, one at a time, so invoices
are serialized (one open invoice on the MCF) while the asyncio loop keeps serving the API.

Per job (see docs/mcf-protocol.md "Device mode"):

1. intents left in flight are settled first (recovery.py): a retry of an in-flight request_id is
   answered from the device, never normalized a second time;
2. C1h: the device must be ready, and its last FN must differ from ours (409 otherwise);
3. the intent is written durably (journal writer) BEFORE C0h;
4. C3h C0h 31h* 36h* 33h (cross-checked with the tax engine: 422 naming both amounts and 38h C
   on a mismatch) 35h* 38h;
5. the 38h answer is recorded with `Journal.record_device_seal` (same transaction removes the
   intent) and returned.

Failures: a link fault before C0h was acknowledged -> SignerUnavailable (the policy falls back);
after it -> C1h tells: normalized -> recorded; not normalized -> 38h C and SignerUnavailable;
no answer at all -> the intent stays and the POS gets 503 `/problems/device-outcome-unknown`
and retries the same request_id.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

from drivers.usb_fiscal_memory.client import (
    DeviceNotReady,
    MCFClient,
    NormalizationPending,
    SubtotalMismatch,
)
from drivers.usb_fiscal_memory.errors import DeviceError, LinkClosed, MCFLinkError
from drivers.usb_fiscal_memory.fields import InvalidRequest
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport import Transport, open_transport

from ..errors import AgentError, IdempotencyConflict, InvalidInvoice
from ..journal import Journal, SealJob, SealOutcome, stored_request
from ..signers import SignerUnavailable
from ..store import device as intents_store
from ..store.bodies import unpack
from ..store.db import connect
from . import recovery
from .draft import DeviceTotalsMismatch, build_draft, cross_check_for
from .status import DeviceHealth

log = logging.getLogger("stalela.device")

POLL_SECONDS = 30.0  # status poll while the device answers
PROBE_SECONDS = 2.0  # while it does not: a quick probe so a replugged device is used again


class DeviceOutcomeUnknown(AgentError):
    """The device may or may not have normalized the invoice: retry the same request_id."""

    status = 503
    type = "/problems/device-outcome-unknown"
    title = "The fiscal device's answer is not known yet"


class InvoiceNumberReused(AgentError):
    status = 409
    type = "/problems/invoice-number-reused"
    title = "invoice_number already used on the fiscal device"


def _is_fn_refusal(exc: DeviceError) -> bool:
    text = exc.text.upper()
    return exc.cmd == 0xC0 and "NUMERO" in text and ("UTILISE" in text or "PRECEDENT" in text)


class DeviceSigner:
    name = "device"
    answers_retries = False
    keeps_drafts = False
    online = True

    def __init__(self, url: str, journal: Journal, *, nif: str, isf: str, tz: Any,
                 link_timeout: float = 0.5, retries: int = 3,
                 on_available: Callable[[], None] | None = None,
                 poll_seconds: float = POLL_SECONDS, probe_seconds: float = PROBE_SECONDS) -> None:
        self.url = url
        self.journal = journal
        self.nif = nif
        self.isf = isf
        self.tz = tz
        self.link_timeout = link_timeout
        self.retries = retries
        self.on_available = on_available
        self.poll_seconds = poll_seconds
        self.probe_seconds = probe_seconds
        self.link = DeviceHealth(url, tz)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcf-device")
        self._transport: Transport | None = None
        self._client: MCFClient | None = None
        self._db: sqlite3.Connection | None = None
        self._poll_task: asyncio.Task | None = None
        self._job_rid: str | None = None
        self._acked_open = False
        self._opened = None
        self._identified = False
        self.sealed = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Queue the start-up recovery first on the worker: no job runs before it."""
        first = self._executor.submit(self._startup)
        self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop(first))

    async def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._executor.submit(self._close_in_worker).result(timeout=60)
        self._executor.shutdown(wait=True)

    def _close_in_worker(self) -> None:
        self._drop_link()
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _poll_loop(self, first) -> None:
        try:
            came_back = await asyncio.wrap_future(first)
        except Exception:  # logged by the worker
            came_back = False
        self._notify(came_back)
        last = time.monotonic()
        while True:
            # Wake often; poll every poll_seconds while the device answers, every probe_seconds
            # once it does not (so a replugged device is back within seconds).
            await asyncio.sleep(self.probe_seconds)
            if self.link.reachable and time.monotonic() - last < self.poll_seconds:
                continue
            last = time.monotonic()
            try:
                came_back = await asyncio.wrap_future(self._executor.submit(self._poll))
            except RuntimeError:  # executor shut down
                return
            except Exception as exc:  # never let the poll die
                log.warning("device poll error", extra={"event": "device.poll_error", "error": str(exc)})
                continue
            self._notify(came_back)

    def _notify(self, came_back: bool) -> None:
        if came_back and self.link.available and self.on_available is not None:
            self.on_available()

    # ------------------------------------------------------------------ the API side
    async def seal(self, job: SealJob) -> SealOutcome:
        try:
            future = self._executor.submit(self._seal, job)
        except RuntimeError:
            raise SignerUnavailable("device", "the device signer is stopping") from None
        return await asyncio.wrap_future(future)

    def health(self) -> dict[str, Any]:
        return self.link.snapshot()

    def state(self) -> str:
        return "available" if self.link.snapshot().get("available", True) else "unavailable"

    # ------------------------------------------------------------------ worker: link
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = connect(self.journal.db_path)
        return self._db

    def _connect(self) -> MCFClient:
        if self._client is None:
            transport = open_transport(self.url)
            try:
                transport.open()
            except BaseException:
                transport.close()
                raise
            self._transport = transport
            self._client = MCFClient(Link(transport, timeout=self.link_timeout, retries=self.retries),
                                     on_step=self._on_step)
        return self._client

    def _drop_link(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception:
                pass
        self._transport = None
        self._client = None

    def _link_failed(self, exc: Exception) -> None:
        self._drop_link()
        # PermissionDenied's message already names the fix (udev rule, group dialout).
        self.link.failed(f"{type(exc).__name__}: {exc}")

    def _read_status(self, client: MCFClient):
        mcf = client.status()
        came_back = self.link.reached(mcf, client.last_status)
        return mcf, came_back

    def _fresh_status(self):
        """C1h; a handle that went stale (device replugged since) is reopened once."""
        had_link = self._client is not None
        try:
            client = self._connect()
            return (client, *self._read_status(client))
        except LinkClosed:
            if not had_link:
                raise
            self._drop_link()
            client = self._connect()
            return (client, *self._read_status(client))

    def _identify(self, client: MCFClient, mcf) -> None:
        """Once per run: taxpayer info, and the tax rates against the table."""
        if self._identified:
            return
        self.link.taxpayer = client.taxpayer()
        from .firmware import firmware_strings

        self.link.firmware = firmware_strings(self.url)
        from fiscal.tax.table import TaxTable

        today = datetime.now(self.tz).date()
        self.link.rates_checked(TaxTable.load().check_device_rates(mcf.rates, today))
        if mcf.nif != self.nif:
            log.error("the device belongs to another taxpayer", extra={
                "event": "device.nif_mismatch", "device_nif": mcf.nif, "outlet_nif": self.nif})
        self._identified = True

    def _server_link(self, client: MCFClient) -> None:
        try:
            self.link.server_link(client.server_link())
        except DeviceError as exc:
            log.info("C2h refused", extra={"event": "device.c2h_refused", "error": exc.text})

    def _refresh_intents_count(self) -> None:
        self.link.pending_intents = intents_store.intent_count(self._conn())

    # ------------------------------------------------------------------ worker: start-up, poll
    def _startup(self) -> bool:
        return self._poll(startup=True)

    def _poll(self, startup: bool = False) -> bool:
        try:
            client, mcf, came_back = self._fresh_status()
            self._identify(client, mcf)
            if recovery.intent_rows(self._conn()):
                recovery.resolve_intents(client, self.journal, self._conn(), mcf)
            self._server_link(client)
        except (MCFLinkError, DeviceError) as exc:
            if isinstance(exc, MCFLinkError):
                self._link_failed(exc)
            else:
                log.warning("device refused a status command", extra={"event": "device.refused", "error": exc.text})
            came_back = False
        finally:
            self._refresh_intents_count()
        if startup:
            log.info("device signer started", extra={"event": "device.started", "url": self.url,
                                                     "available": self.link.available,
                                                     "pending_intents": self.link.pending_intents})
        return came_back

    # ------------------------------------------------------------------ worker: sealing
    def _on_step(self, step: str) -> None:
        if step == "open":
            self._acked_open = True
            opened = self._opened = self._client.last_opened if self._client is not None else None
            if opened is not None and self._job_rid is not None:
                # Not waited for: it only makes a later recovery's FC exact. Queue order puts it
                # before the record of this invoice.
                rid, extra = self._job_rid, {"fc": opened.fc, "tc": opened.tc}
                self.journal.run_in_writer(lambda conn: _add_opened(conn, rid, extra))

    def _existing(self, job: SealJob) -> SealOutcome | None:
        """The stored answer when this request was sealed before; a queued draft of it is sealed now."""
        row = stored_request(self._conn(), job.request["request_id"], job.fingerprint)
        if row is None or row["status"] == "queued":
            return None
        return SealOutcome(json.loads(unpack(row["body"])), created=False)

    def _seal(self, job: SealJob) -> SealOutcome:
        try:
            return self._seal_job(job)
        finally:
            self._job_rid = None
            self._refresh_intents_count()

    def _seal_job(self, job: SealJob) -> SealOutcome:
        req = job.request
        rid, fn = req["request_id"], req["invoice_number"]
        done = self._existing(job)
        if done is not None:
            return done
        in_flight = [r for r in recovery.intent_rows(self._conn()) if r["request_id"] == rid]
        if in_flight and in_flight[0]["fingerprint"] != job.fingerprint:
            raise IdempotencyConflict(f"request_id {rid!r} was already used for a different invoice")
        try:
            draft = build_draft(req, job.lines, job.totals, nif=self.nif, isf=self.isf)
        except InvalidRequest as exc:
            raise InvalidInvoice(f"the fiscal device cannot take this invoice: {exc}",
                                 errors=[{"field": "body", "message": str(exc)}]) from None
        # 1-2: settle what is in flight, then check the device.
        try:
            client, mcf, came_back = self._fresh_status()
            self._identify(client, mcf)
            for res in recovery.resolve_intents(client, self.journal, self._conn(), mcf):
                if res.request_id == rid and res.sealed is not None:
                    return res.sealed
            if in_flight:
                mcf, _ = self._read_status(client)  # after the cancel, if there was one
        except MCFLinkError as exc:
            self._link_failed(exc)
            if in_flight:
                raise DeviceOutcomeUnknown(
                    f"the fiscal device does not answer ({exc}); whether invoice {fn} was normalized is "
                    "not known yet: send the same request again", request_id=rid) from None
            raise SignerUnavailable("device", f"device unreachable: {exc}") from None
        except DeviceError as exc:
            raise SignerUnavailable("device", f"device refused C1h: {exc.text}") from None
        if came_back and self.on_available is not None:
            self.on_available()
        blocked = self.link.blocking_reason()
        if blocked:
            raise SignerUnavailable("device", blocked)
        if mcf.nif != self.nif:
            raise SignerUnavailable("device", f"the device's NIF {mcf.nif} is not the outlet's ({self.nif})")
        if mcf.dfn == fn:
            raise InvoiceNumberReused(
                f"invoice_number {fn!r} is the fiscal device's last invoice number (code {mcf.dfs}); "
                "the device refuses an invoice number equal to the previous one: send a new invoice_number",
                errors=[{"field": "invoice_number", "message": "equal to the device's last invoice number"}])
        # 3: the intent, durably, before C0h.
        payload = json.dumps({"request": req, "lines": job.lines, "totals": job.totals},
                             ensure_ascii=False, separators=(",", ":"))
        started = datetime.now(timezone.utc).isoformat()
        self.journal.run_in_writer(lambda conn: intents_store.record_intent(
            conn, rid, job.fingerprint, fn, payload, started)).result()
        self._job_rid, self._acked_open, self._opened = rid, False, None
        # 4: the invoice on the device.
        try:
            result = client.seal_invoice(draft, cross_check=cross_check_for(job.totals))
        except DeviceTotalsMismatch as exc:
            recovery.delete_intent(self.journal, rid)
            log.warning("device subtotal differs from the tax engine; invoice cancelled",
                        extra={"event": "device.subtotal_mismatch", "request_id": rid, "errors": exc.errors})
            raise InvalidInvoice("the fiscal device's subtotal (33h) differs from the agent's tax computation; "
                                 "the invoice was cancelled on the device: "
                                 + "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors),
                                 errors=exc.errors) from None
        except SubtotalMismatch as exc:
            recovery.delete_intent(self.journal, rid)
            raise InvalidInvoice(f"the fiscal device's subtotal differs: {exc}; the invoice was cancelled",
                                 errors=[{"field": "totals", "message": str(exc)}]) from None
        except NormalizationPending as exc:
            raise DeviceOutcomeUnknown(f"the fiscal device is still working on invoice {fn} ({exc.pending.reason}); "
                                       "send the same request again", request_id=rid) from None
        except DeviceNotReady as exc:
            recovery.delete_intent(self.journal, rid)
            raise SignerUnavailable("device", exc.text) from None
        except DeviceError as exc:
            # Refused before C0h, or after it (the driver has cancelled the invoice): not normalized.
            recovery.delete_intent(self.journal, rid)
            if _is_fn_refusal(exc):
                raise InvoiceNumberReused(f"the fiscal device refuses invoice_number {fn!r}: {exc.text}",
                                          errors=[{"field": "invoice_number", "message": exc.text}]) from None
            raise InvalidInvoice(f"the fiscal device refused the invoice ({exc.cmd:02X}h): {exc.text}",
                                 errors=[{"field": _field_of(exc.cmd), "message": exc.text}]) from None
        except InvalidRequest as exc:
            # A frame the driver could not build, possibly after C0h: cancel what is open.
            self._cancel_open(client)
            recovery.delete_intent(self.journal, rid)
            raise InvalidInvoice(f"the fiscal device cannot take this invoice: {exc}",
                                 errors=[{"field": "items", "message": str(exc)}]) from None
        except MCFLinkError as exc:
            self._link_failed(exc)
            if not self._acked_open:
                # C0h never answered: nothing can have been normalized (an invoice the MCF may
                # have opened is cancelled by the next check_ready / recovery).
                recovery.delete_intent(self.journal, rid)
                raise SignerUnavailable("device", f"link lost before the invoice was opened: {exc}") from None
            return self._after_link_failure(job, exc)
        # 5: record exactly what the device returned.
        outcome = recovery.record(self.journal, job, result)
        self.sealed += 1
        if client.warnings:
            log.info("device flow warnings", extra={"event": "device.warnings", "warnings": client.warnings})
        return outcome

    def _after_link_failure(self, job: SealJob, error: Exception) -> SealOutcome:
        rid, fn = job.request["request_id"], job.request["invoice_number"]
        try:
            client = self._connect()
            mcf, _ = self._read_status(client)
        except MCFLinkError as exc:
            self._link_failed(exc)
            log.warning("device outcome unknown", extra={"event": "device.outcome_unknown", "request_id": rid})
            raise DeviceOutcomeUnknown(
                f"the link to the fiscal device failed during invoice {fn} ({error}) and the device does not "
                "answer yet; send the same request again", request_id=rid) from None
        opened = self._opened  # the C0h answer (FC/TC this invoice gets once normalized)
        result = MCFClient.last_result_in(mcf, fn, opened)
        if result is not None:
            log.info("device invoice recovered after a link failure",
                     extra={"event": "device.recovered_after_link_failure", "request_id": rid})
            return recovery.record(self.journal, job, result)
        self._cancel_open(client)
        recovery.delete_intent(self.journal, rid)
        raise SignerUnavailable("device", f"link lost during the invoice, which the device did not normalize: {error}")

    def _cancel_open(self, client: MCFClient) -> None:
        try:
            if client.last_status is not None and client.last_status.invoice_open:
                client.cancel()
        except (MCFLinkError, DeviceError) as exc:
            log.warning("could not cancel the open invoice", extra={"event": "device.cancel_failed", "error": str(exc)})


def _add_opened(conn: sqlite3.Connection, request_id: str, opened: dict) -> None:
    recorded = intents_store.intent_job(conn, request_id)
    if recorded is None:
        return
    data = json.loads(recorded)
    data["opened"] = opened
    intents_store.set_intent_job(conn, request_id, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _field_of(cmd: int) -> str:
    return {0xC3: "client", 0xC0: "body", 0x31: "items", 0x36: "comments", 0x35: "payments",
            0x38: "totals"}.get(cmd, "body")


def from_config(config, journal: Journal, identity, tz, on_available: Callable[[], None]) -> DeviceSigner:
    """The daemon's constructor: url from [device], identity from the enrollment; `on_available`
    closes the device's breaker as soon as the device answers again."""
    return DeviceSigner(config.device_url, journal, nif=identity.merchant_nif, isf=journal.isf, tz=tz,
                        on_available=on_available)
