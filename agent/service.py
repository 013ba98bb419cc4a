"""The agent service: what the HTTP layer needs, composed once at start-up.

It holds the parts the daemon built (journal, signer policy, sync worker, credential keeper)
and answers the API's questions: prepare an invoice, seal it through the policy, read invoices,
health. It decides nothing about which signer seals: that is agent/signers/policy.py.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fiscal.canonical import Fragments, compose, sha256_hex
from fiscal.models import InvoiceRequest
from fiscal.runtime.problems import validation_errors
from fiscal.signing import load_private_key
from fiscal.tax import TaxError, compute

from .config import AgentConfig, zone
from .errors import AgentError, InvalidInvoice
from .identity import OutletIdentity
from .journal import Journal, SealJob, SealOutcome, stored_request
from .signers.credentials import credential_status
from .signers import Breaker, PolicyEntry, SignerPolicy
from .signers.delegated import DelegatedSigner
from .signers.queued import QueuedSigner
from .store import invoices
from .store.bodies import unpack

if TYPE_CHECKING:
    from .renewal import CredentialKeeper
    from .sealer import SealerProcess
    from .sync import SyncWorker

log = logging.getLogger("stalela.agent")


class NotEnrolled(RuntimeError):
    pass


def open_journal(config: AgentConfig) -> Journal:
    """The enrolled outlet's journal, its writer started (NotEnrolled before `agent enroll`)."""
    if not config.enrollment_path.exists():
        raise NotEnrolled(f"{config.data_dir} is not enrolled yet: run `stalela agent enroll`")
    identity = OutletIdentity.load(config.enrollment_path)
    key = load_private_key(config.key_path)
    tz = zone(config.time_zone or identity.time_zone)
    journal = Journal(config.db_path, identity, key, tz, isf=config.isf, max_batch=config.max_batch)
    journal.start()
    return journal


def local_policy(config: AgentConfig, journal: Journal, delegated: DelegatedSigner | None = None) -> SignerPolicy:
    """The policy of the signers that need no link (delegated, queued), in the configured order;
    the daemon adds the device and the cloud (agent/daemon.py)."""
    return build_policy(config, {"delegated": delegated or DelegatedSigner(journal), "queued": QueuedSigner(journal)})


def build_policy(config: AgentConfig, signers: dict[str, Any],
                 breakers: dict[str, Breaker] | None = None) -> SignerPolicy:
    """The configured order over the signers this outlet runs, each behind its own breaker (a
    signer that closes its breaker itself, like the device's poll, brings its own)."""
    breakers = breakers or {}
    entries = [PolicyEntry(signers[name], breakers.get(name) or Breaker(config.breaker_seconds))
               for name in config.signer_policy if name in signers]
    missing = tuple(name for name in config.signer_policy if name not in signers)
    return SignerPolicy(entries, not_configured=missing, order=tuple(config.signer_policy))


@dataclass
class AgentService:
    config: AgentConfig
    journal: Journal
    policy: SignerPolicy
    sync: "SyncWorker | None" = None
    keeper: "CredentialKeeper | None" = None
    sealer: "SealerProcess | None" = None
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, config: AgentConfig) -> "AgentService":
        """A service on the outlet's journal with the local signers only (tools, reports, tests)."""
        journal = open_journal(config)
        return cls(config=config, journal=journal, policy=local_policy(config, journal))

    @property
    def identity(self) -> OutletIdentity:
        return self.journal.identity

    @property
    def tz(self):
        return self.journal.tz

    def close(self) -> None:
        self.journal.close()

    # ---------------------------------------------------------------- sealing
    def prepare(self, payload: Any) -> SealJob:
        """Validate and compute: everything that can refuse an invoice before it touches the journal."""
        try:
            request = InvoiceRequest.model_validate(payload)
        except ValidationError as exc:
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

    def stored_answer(self, job: SealJob) -> dict | None:
        """The invoice already sealed for this request (with its sync state), None when it must
        be sealed now (never seen, or waiting as a draft); 409 when the body differs."""
        row = stored_request(self.journal.reader, job.request["request_id"], job.fingerprint)
        if row is None or row["status"] == "queued":
            return None
        return self._with_sync(json.loads(unpack(row["body"])), row)

    def writer_answers_retries(self) -> bool:
        """True when the first signer the policy would try answers a retried request_id itself,
        in its sealing transaction (the journal's writer): the API need not look it up first."""
        return self.policy.first_answers_retries()

    async def seal(self, job: SealJob, *, allow_queue: bool = True) -> SealOutcome:
        """Seal with the first signer of the policy that can (see agent/signers/policy.py)."""
        return await self.policy.seal(job, allow_drafts=allow_queue)

    async def seal_drafts(self, limit: int = 200) -> int:
        """Seal queued drafts, oldest first, as soon as a signer can (policy `queued`)."""
        rows = invoices.queued_drafts(self.journal.reader, limit)
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
        entry = self.policy.next_entry()
        return entry.name if entry is not None else None

    # ---------------------------------------------------------------- reading
    @staticmethod
    def _with_sync(body: dict, row) -> dict:
        body["sync"] = {"state": row["sync_state"], "reason": row["sync_reason"]}
        return body

    def get_invoice(self, invoice_id: str) -> dict | None:
        row = invoices.invoice_by_id(self.journal.reader, invoice_id)
        return self._with_sync(json.loads(unpack(row["body"])), row) if row else None

    def list_invoices(self, *, status: str | None, since: str | None, limit: int,
                      cursor: int | None) -> tuple[list[dict], int | None]:
        rows = invoices.page(self.journal.reader, status=status, since=since, before_seq=cursor, limit=limit + 1)
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
        entry = self.policy.next_entry()
        mode = entry.name if entry is not None else None
        low = cred["remaining"] < self.config.renew_below_numbers and not cred["ready"]
        keeper = self.keeper
        if entry is None:
            status, color = "blocked", "red"
        elif entry.signer.keeps_drafts or (isinstance(entry.signer, DelegatedSigner) and low):
            # Drafts only, or the delegated block runs low with no successor ready (a failed
            # renewal shows in credential.last_renewal_error).
            status, color = "degraded", "amber"
        else:
            status = "ok"
            # Any sign that the cloud is out of reach wins over "synchronising": blue promises the
            # cashier that the backlog is on its way, which an outage just begun does not keep
            # (the outbox may simply not have tried yet while the cloud signer already failed).
            cloud_signer_down = self.policy.entry("cloud") is not None and not self.policy.reachable("cloud")
            offline = bool((keeper and keeper.cloud_offline) or sync["last_error"] or cloud_signer_down)
            if not entry.signer.online and offline:
                color = "amber"
            elif sync["pending"] and sync["worker"] == "running" and not offline:
                color = "blue"
            else:
                color = "green"
        body: dict[str, Any] = {
            "status": status,
            "state": color,
            "mode": mode,
            "signers": self.policy.states(),
            "device": self.policy.health_of("device"),
            "credential": {
                "remaining_numbers": cred["remaining"],
                "active": _public_cred(cred["active"]),
                "ready": [_public_cred(c) for c in cred["ready"]],
                "last_renewal_error": keeper.last_renewal_error if keeper else None,
                "cloud_offline": keeper.cloud_offline if keeper else None,
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


def _public_cred(info: dict | None) -> dict | None:
    if info is None:
        return None
    return {"id": info["id"], "block": info["block"], "remaining": info["remaining"],
            "expires_at": info["not_after"], "seconds_left": info["seconds_left"]}
