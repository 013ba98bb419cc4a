"""The agent service: everything the HTTP layer needs, wired once at start-up."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from pydantic import ValidationError

from .config import AgentConfig, zone
from .errors import AgentError, InvalidInvoice, SealingBlocked
from fiscal.canonical import Fragments, compose, sha256_hex
from fiscal.models import InvoiceRequest
from fiscal.signing import load_private_key
from fiscal.tax import TaxError, compute
from .identity import OutletIdentity
from .journal import Journal, SealJob, SealOutcome, credential_status
from .signers import Breaker, SignerUnavailable
from .store.bodies import unpack

log = logging.getLogger("stalela.agent")


class NotEnrolled(RuntimeError):
    pass


@dataclass
class AgentService:
    config: AgentConfig
    identity: OutletIdentity
    journal: Journal
    started_at: float = field(default_factory=time.monotonic)
    last_renewal_error: str | None = None
    cloud_offline: str | None = None  # set while the cloud cannot be reached for credential checks
    sync: Any = None  # the SyncWorker, when the daemon runs one
    # Optional signers, set by the daemon: `device` (agent.device.DeviceSigner) and `cloud`
    # (agent.cloud_signer.CloudSigner). Each has `async seal(job) -> SealOutcome`, raising
    # SignerUnavailable when it did not seal, and `health() -> dict`.
    device: Any = None
    cloud: Any = None
    breaker: Breaker = field(default_factory=lambda: Breaker(30.0))
    # Called when the active credential runs low, so renewal starts now rather than at the next
    # interval (set by the daemon; it must be cheap and safe to call often).
    renewal_wake: Any = None
    # The sealing process (agent.sealer.SealerProcess) when the daemon runs one: delegated seals
    # go there; the in-process writer takes over whenever it is not ready.
    sealer: Any = None

    @classmethod
    def open(cls, config: AgentConfig) -> "AgentService":
        if not config.enrollment_path.exists():
            raise NotEnrolled(f"{config.data_dir} is not enrolled yet: run `stalela agent enroll`")
        identity = OutletIdentity.load(config.enrollment_path)
        key = load_private_key(config.key_path)
        tz = zone(config.time_zone or identity.time_zone)
        journal = Journal(config.db_path, identity, key, tz, isf=config.isf, max_batch=config.max_batch)
        journal.start()
        return cls(config=config, identity=identity, journal=journal)

    @property
    def tz(self):
        return zone(self.config.time_zone or self.identity.time_zone)

    def close(self) -> None:
        self.journal.close()

    # ---------------------------------------------------------------- sealing
    def prepare(self, payload: Any) -> SealJob:
        """Validate and compute: everything that can refuse an invoice before it touches the journal."""
        try:
            request = InvoiceRequest.model_validate(payload)
        except ValidationError as exc:
            from fiscal.runtime.problems import validation_errors
            raise InvalidInvoice("the invoice does not follow the contract", errors=validation_errors(exc)) from None
        today = datetime.now(self.tz).date()
        try:
            result = compute(request, today)
        except TaxError as exc:
            raise InvalidInvoice(str(exc) or "the invoice's amounts are not valid", errors=exc.errors) from None
        as_json = request.model_dump(mode="json")
        # Each part of the request is encoded once, here: the fingerprint and, in the writer, the
        # signed, hashed and stored forms of the invoice are assembled from these texts.
        fragments = Fragments(as_json)
        lines = result.lines_json  # == [line.model_dump(mode="json") for line in result.lines]
        totals = result.totals_json  # == result.totals.model_dump(mode="json")
        fingerprint = sha256_hex(compose(as_json, fragments).encode("utf-8"))
        fragments.add("lines", lines)
        fragments.add("totals", totals)
        return SealJob(request=as_json, fingerprint=fingerprint, lines=lines, totals=totals, fragments=fragments)

    def existing(self, request_id: str) -> tuple[str, dict] | None:
        row = self.journal.reader.execute(
            "SELECT request_hash, body, sync_state, sync_reason FROM invoices WHERE request_id = ?",
            (request_id,)).fetchone()
        if row is None:
            return None
        return row["request_hash"], self._with_sync(json.loads(unpack(row["body"])), row)

    def writer_answers_retries(self) -> bool:
        """True when the first signer the policy would try is the journal's own (delegated):
        the writer then answers a retried request_id itself, in the sealing transaction, and the
        API need not look it up first."""
        for name in self.config.signer_policy:
            if name == "device" and self.device is None or name == "cloud" and self.cloud is None:
                continue
            return name == "delegated"
        return False

    async def seal(self, job: SealJob, *, allow_queue: bool = True) -> SealOutcome:
        """Seal with the first signer of the policy that can (see agent/signers.py)."""
        unavailable: list[str] = []
        policy = [p for p in self.config.signer_policy if allow_queue or p != "queued"]
        for name in policy:
            signer = {"device": self.device, "cloud": self.cloud}.get(name)
            if name in ("device", "cloud"):
                if signer is None:
                    continue
                if not self.breaker.allows(name):
                    unavailable.append(f"{name}: {self.breaker.last_reason.get(name, 'unavailable')}")
                    continue
                try:
                    outcome = await signer.seal(job)
                except AgentError as exc:
                    if exc.extra.get("reason", "").endswith("outcome_unknown"):
                        # The link is bad: spare the next invoices the same wait.
                        self.breaker.trip(name, exc.detail)
                    raise
                except SignerUnavailable as exc:
                    self.breaker.trip(name, exc.reason)
                    log.warning("signer unavailable", extra={"event": "signer.unavailable", "signer": name,
                                                              "reason": exc.reason})
                    unavailable.append(f"{name}: {exc.reason}")
                    continue
                return outcome
            if name == "delegated":
                try:
                    outcome = await (self.sealer or self.journal).submit_async(job)
                    left = self.journal.numbers_left
                    if self.renewal_wake is not None and left is not None and left < self.config.renew_below_numbers:
                        self.renewal_wake()
                    return outcome
                except SealingBlocked as exc:
                    if "queued" not in policy:
                        if unavailable:
                            exc.detail += " (also unavailable: " + "; ".join(unavailable) + ")"
                        raise
                    unavailable.append(f"delegated: {exc.reason}")
            if name == "queued":
                return await asyncio.wrap_future(self.journal.run_in_writer(lambda c: self.journal.queue_draft(c, job)))
        raise SealingBlocked("no signer of the policy can seal: " + ("; ".join(unavailable) or "none configured"),
                             reason="no_signer")

    async def seal_drafts(self, limit: int = 200) -> int:
        """Seal queued drafts, oldest first, as soon as a signer can (policy `queued`)."""
        rows = self.journal.reader.execute(
            "SELECT request_hash, body FROM invoices WHERE status = 'queued' ORDER BY seq LIMIT ?",
            (limit,)).fetchall()
        sealed = 0
        for row in rows:
            draft = json.loads(unpack(row["body"]))
            job = SealJob(request=draft["request"], fingerprint=row["request_hash"], lines=draft["lines"],
                          totals=draft["totals"])
            try:
                await self.seal(job, allow_queue=False)
            except AgentError as exc:
                log.info("queued drafts wait for a signer", extra={"event": "drafts.waiting", "reason": exc.detail})
                break
            sealed += 1
        if sealed:
            log.info("queued drafts sealed", extra={"event": "drafts.sealed", "count": sealed})
        return sealed

    def next_mode(self) -> str | None:
        """The signer the next invoice would use, for health (without side effects)."""
        for name in self.config.signer_policy:
            if name in ("device", "cloud"):
                signer = {"device": self.device, "cloud": self.cloud}[name]
                if signer is not None and self.breaker.allows(name) and signer.health().get("available", True):
                    return name
            elif name == "delegated":
                if credential_status(self.journal.reader)["remaining"] > 0:
                    return name
            elif name == "queued":
                return name
        return None

    # ---------------------------------------------------------------- reading
    @staticmethod
    def _with_sync(body: dict, row) -> dict:
        body["sync"] = {"state": row["sync_state"], "reason": row["sync_reason"]}
        return body

    def get_invoice(self, invoice_id: str) -> dict | None:
        row = self.journal.reader.execute(
            "SELECT body, sync_state, sync_reason FROM invoices WHERE id = ?", (invoice_id,)).fetchone()
        return self._with_sync(json.loads(unpack(row["body"])), row) if row else None

    def list_invoices(self, *, status: str | None, since: str | None, limit: int,
                      cursor: int | None) -> tuple[list[dict], int | None]:
        sql = "SELECT seq, body, sync_state, sync_reason FROM invoices WHERE 1=1"
        args: list[Any] = []
        if status:
            sql += " AND status = ?"
            args.append(status)
        if since:
            sql += " AND created_at >= ?"
            args.append(since)
        if cursor is not None:
            sql += " AND seq < ?"
            args.append(cursor)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        rows = self.journal.reader.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        items = [self._with_sync(json.loads(unpack(r["body"])), r) for r in rows]
        return items, (rows[-1]["seq"] if more and rows else None)

    # ---------------------------------------------------------------- sync
    def sync_status(self) -> dict[str, Any]:
        from .sync import outbox_status

        status = outbox_status(self.journal.reader)
        stats = self.sync.stats if self.sync is not None else None
        status.update({
            "worker": "running" if stats and stats.running else "stopped",
            "last_success": stats.last_success if stats else None,
            "last_error": stats.last_error if stats else None,
            "last_error_at": stats.last_error_at if stats else None,
        })
        return status

    # ---------------------------------------------------------------- health
    def health(self) -> dict[str, Any]:
        """Signer, credential, device and sync state. No secrets, no invoice data."""
        now = datetime.now(timezone.utc)
        cred = credential_status(self.journal.reader, now)
        sync = self.sync_status()
        mode = self.next_mode()
        low = cred["remaining"] < self.config.renew_below_numbers and not cred["ready"]
        online = mode in ("device", "cloud") or (self.cloud is not None and self.breaker.allows("cloud")
                                                  and self.cloud.health().get("available", False))
        if mode is None:
            status, color = "blocked", "red"
        elif mode == "queued" or (mode == "delegated" and low):
            # Running low with no successor ready (a failed renewal shows in credential.last_renewal_error).
            status, color = "degraded", "amber"
        else:
            status = "ok"
            # Any sign that the cloud is out of reach wins over "synchronising": blue promises the
            # cashier that the backlog is on its way, which an outage just begun does not keep
            # (the outbox may simply not have tried yet while the cloud signer already failed).
            offline = bool(self.cloud_offline or sync["last_error"] or (self.cloud is not None and not online))
            if mode == "delegated" and offline:
                color = "amber"
            elif sync["pending"] and sync["worker"] == "running" and not offline:
                color = "blue"
            else:
                color = "green"
        body: dict[str, Any] = {
            "status": status,
            "state": color,
            "mode": mode,
            "signers": {name: self._signer_state(name) for name in self.config.signer_policy},
            "device": self.device.health() if self.device is not None else None,
            "credential": {
                "remaining_numbers": cred["remaining"],
                "active": _public_cred(cred["active"]),
                "ready": [_public_cred(c) for c in cred["ready"]],
                "last_renewal_error": self.last_renewal_error,
                "cloud_offline": self.cloud_offline,
            },
            "sync": {k: sync[k] for k in ("pending", "oldest_pending", "quarantined", "last_success", "last_error")},
            "clock_skew_seconds": self.journal.last_clock_skew,
            # "ready", "starting", "stopped" (starts with the next sale) or "off" (see agent/sealer.py).
            "sealing_process": self.sealer.state if self.sealer is not None else "off",
            "outlet_id": self.identity.outlet_id,
        }
        if status == "blocked":
            body["reason"] = ("no signer can seal (no device or cloud, and the delegated credential's block "
                              "is used up or expired): sales must halt until a signer returns")
        return body

    def _signer_state(self, name: str) -> str:
        if name in ("device", "cloud"):
            signer = {"device": self.device, "cloud": self.cloud}[name]
            if signer is None:
                return "not configured"
            if not self.breaker.allows(name):
                return "unavailable: " + self.breaker.last_reason.get(name, "")
            return "available" if signer.health().get("available", True) else "unavailable"
        if name == "delegated":
            return "available" if credential_status(self.journal.reader)["remaining"] else "blocked"
        return "available"


def _public_cred(info: dict | None) -> dict | None:
    if info is None:
        return None
    return {"id": info["id"], "block": info["block"], "remaining": info["remaining"],
            "expires_at": info["not_after"], "seconds_left": info["seconds_left"]}
