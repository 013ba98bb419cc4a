"""The cloud service: one object that the HTTP layer and the CLI both drive.

Every public method is synchronous and runs one transaction; the HTTP layer calls them from a
small thread pool (`CloudService.call`) so the event loop never waits on the disk.
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Callable, TypeVar

from agent.fiscal.credential import BlockClosure
from agent.fiscal.models import InvoiceRequest

from . import audit, issuer as issuing, ledger, reconcile, registry, signer
from .config import CloudConfig, ensure_data_dir, load_or_create_admin_token, load_or_create_issuer_key
from .issuer import Issuer, credential_status
from .logs import event
from .repository import Store

T = TypeVar("T")


class CloudService:
    def __init__(self, config: CloudConfig):
        self.config = config
        ensure_data_dir(config.data_dir)
        self.issuer = Issuer.from_key(load_or_create_issuer_key(config.issuer_key_path))
        self.admin_token = config.admin_token or load_or_create_admin_token(config.admin_token_path)
        self.store = Store(config.db_path)
        self._pool: ThreadPoolExecutor | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.config.clock()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="cloud-db")
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.store.close()

    def issuer_info(self) -> dict:
        return {"public_key": self.issuer.public_key, "key_id": self.issuer.key_id, "algorithm": "Ed25519"}

    # -- admin ------------------------------------------------------------------------------

    def add_merchant(self, nif: str, name: str, taxpayer: dict | None = None) -> dict:
        with self.store.write() as tx:
            merchant = registry.add_merchant(tx, nif, name, taxpayer or {}, self.now())
        event("merchant.added", nif=nif)
        return merchant

    def add_outlet(self, outlet_id: str, merchant_nif: str, name: str,
                   time_zone: str = "Africa/Kinshasa", isf: str | None = None) -> dict:
        with self.store.write() as tx:
            outlet = registry.add_outlet(tx, outlet_id, merchant_nif, name, time_zone, isf, self.now())
        event("outlet.added", outlet_id=outlet_id, merchant_nif=merchant_nif)
        return outlet

    def create_token(self, outlet_id: str, ttl: timedelta | None = None) -> dict:
        with self.store.write() as tx:
            token, expires_at = registry.create_token(tx, outlet_id, ttl or self.config.token_ttl, self.now())
        event("enrollment_token.created", outlet_id=outlet_id, expires_at=expires_at)
        return {"outlet_id": outlet_id, "token": token, "expires_at": expires_at}

    def outlets(self) -> list[dict]:
        with self.store.read() as tx:
            return tx.outlets()

    def revoke_credential(self, credential_id: str, reason: str,
                          effective_at: datetime | None = None) -> dict:
        with self.store.write() as tx:
            row = issuing.revoke(tx, credential_id, reason, effective_at, self.now())
        event("credential.revoked", credential_id=credential_id, revoked_at=row["revoked_at"])
        return credential_status(row, self.now())

    def flags(self, outlet_id: str | None = None, open_only: bool = False) -> list[dict]:
        with self.store.read() as tx:
            if outlet_id is not None:
                registry.get_outlet(tx, outlet_id)
            return [audit.flag_view(f) for f in tx.flags(outlet_id, open_only)]

    def audit(self, outlet_id: str | None = None) -> list[int]:
        """Run gap detection for one outlet or all; returns the ids of new flags."""
        new: list[int] = []
        with self.store.read() as tx:
            outlet_ids = [outlet_id] if outlet_id else tx.outlet_ids()
        for oid in outlet_ids:
            with self.store.write() as tx:
                new += audit.audit_outlet(tx, oid, self.now(), self.config.gap_grace)
        for flag_id in new:
            event("outlet.flagged", flag_id=flag_id)
        return new

    def verify_ledger(self, outlet_id: str) -> dict:
        with self.store.read() as tx:
            registry.get_outlet(tx, outlet_id)
            count, problems = ledger.verify(tx, outlet_id)
        return {"outlet_id": outlet_id, "entries": count, "valid": not problems, "problems": problems}

    # -- agents -----------------------------------------------------------------------------

    def enroll(self, token: str, agent_public_key: str, label: str) -> dict:
        with self.store.write() as tx:
            agent, api_token, outlet = registry.enroll(tx, token, agent_public_key, label, self.now())
        event("agent.enrolled", agent_id=agent["id"], outlet_id=agent["outlet_id"],
              retired_agents=agent["retired"])
        return {"agent_id": agent["id"], "agent_token": api_token, "outlet": registry.outlet_view(outlet),
                "issuer_public_key": self.issuer.public_key, "issuer_key_id": self.issuer.key_id}

    def authenticate(self, api_token: str) -> dict | None:
        with self.store.read() as tx:
            return registry.authenticate(tx, api_token)

    def issue_credential(self, agent: dict, closure: BlockClosure | None = None,
                         block_size: int | None = None, request_id: str | None = None) -> tuple[dict, bool]:
        size = issuing.check_block_size(self.config.block_size if block_size is None else block_size,
                                        self.config.max_block_size)
        now = self.now()
        with self.store.write() as tx:
            outlet = registry.get_outlet(tx, agent["outlet_id"])
            if closure is not None:
                issuing.apply_closure(tx, agent, closure, now)
            row, created = issuing.issue_credential(
                tx, self.issuer, agent, outlet, block_size=size, validity=self.config.credential_validity,
                slack=self.config.clock_slack, now=now, request_id=request_id)
            if closure is not None:
                audit.audit_outlet(tx, outlet["id"], now, self.config.gap_grace)
        if closure is not None:
            event("credential.closed", credential_id=closure.credential_id, last_used=closure.last_used)
        if created:
            event("credential.issued", credential_id=row["id"], outlet_id=row["outlet_id"],
                  block_start=row["block_start"], block_end=row["block_end"])
        return json.loads(row["document"]), created

    def close_credential(self, agent: dict, closure: BlockClosure) -> dict:
        """Record a block closure on its own (the agent moved on without needing a new credential)."""
        now = self.now()
        with self.store.write() as tx:
            row = issuing.apply_closure(tx, agent, closure, now)
            audit.audit_outlet(tx, agent["outlet_id"], now, self.config.gap_grace)
        event("credential.closed", credential_id=closure.credential_id, last_used=closure.last_used)
        return credential_status(row, now)

    def credential(self, credential_id: str, outlet_id: str | None) -> dict:
        with self.store.read() as tx:
            row = issuing.credential_for(tx, credential_id, outlet_id)
        return credential_status(row, self.now())

    def seal(self, agent: dict, request: InvoiceRequest, isf: str | None = None,
             invoice_id: str | None = None) -> tuple[dict, bool]:
        now = self.now()
        with self.store.read() as tx:
            outlet = registry.get_outlet(tx, agent["outlet_id"])
        chosen_isf = signer.resolve_isf(outlet, isf)
        lines, totals = signer.compute_totals(request, outlet, now)  # pure: outside the write lock
        with self.store.write() as tx:
            invoice, created = signer.seal(tx, self.issuer, outlet, request, isf=chosen_isf,
                                           invoice_id=invoice_id, lines=lines, totals=totals, now=now)
        if created:
            event("invoice.sealed", outlet_id=outlet["id"], fiscal_number=invoice["security"]["fiscal_number"])
        return invoice, created

    def reconcile(self, agent: dict, invoices: list[Any]) -> dict:
        now = self.now()
        with self.store.write() as tx:
            outlet = registry.get_outlet(tx, agent["outlet_id"])
            outcomes = reconcile.reconcile_batch(tx, self.issuer, outlet, invoices, now)
            new_flags = audit.audit_outlet(tx, outlet["id"], now, self.config.gap_grace)
        counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("accepted", "duplicate", "rejected")}
        event("reconcile.batch", outlet_id=outlet["id"], agent_id=agent["id"], **counts,
              new_flags=len(new_flags))
        return {"outlet_id": outlet["id"], **counts, "results": [o.as_dict() for o in outcomes]}

    def provision_device(self, outlet_id: str, mid: str, nif: str, status: str = "active",
                         firmware: dict | None = None) -> tuple[dict, bool]:
        with self.store.write() as tx:
            device, created = registry.provision_device(tx, outlet_id, mid, nif, status, firmware or {},
                                                        self.now())
        event("device.provisioned" if created else "device.updated", outlet_id=outlet_id, mid=mid)
        return device, created

    # -- outlet reads (tenant-checked by the caller) ------------------------------------------

    def outlet(self, outlet_id: str) -> dict:
        with self.store.read() as tx:
            return registry.outlet_view(registry.get_outlet(tx, outlet_id))

    def ledger_page(self, outlet_id: str, after: int = 0, limit: int = 100) -> dict:
        with self.store.read() as tx:
            registry.get_outlet(tx, outlet_id)
            return ledger.page(tx, outlet_id, after, limit)

    def summary(self, outlet_id: str, start: str | None, end: str | None) -> dict:
        with self.store.read() as tx:
            return ledger.summary(tx, registry.get_outlet(tx, outlet_id), start, end)

    def rejections(self, outlet_id: str, limit: int = 100) -> list[dict]:
        with self.store.read() as tx:
            registry.get_outlet(tx, outlet_id)
            return [reconcile.rejection_view(r) for r in tx.rejections(outlet_id, limit)]

    def devices(self, outlet_id: str) -> list[dict]:
        with self.store.read() as tx:
            registry.get_outlet(tx, outlet_id)
            return [registry.device_view(r) for r in tx.devices(outlet_id)]

