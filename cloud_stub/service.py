"""The cloud service: one object that the HTTP layer and the CLI both drive.

Every public method is synchronous and runs one transaction; the HTTP layer calls them from a
small thread pool (`CloudService.call`) so the event loop never waits on the disk. The service
also owns the verifier pool (verifier.py), the worker processes that check large reconcile
batches in parallel.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, Callable, ContextManager, Iterable, Iterator, TypeVar

from fiscal.credential import BlockClosure
from fiscal.models import InvoiceRequest

from . import audit, bodies, checks, issuer as issuing, ledger, ledger_partitions, reconcile, registry, signer
from .checks import Checked
from .config import CloudConfig, ensure_data_dir, load_or_create_admin_token, load_or_create_issuer_key
from .errors import Conflict, DatabaseUnavailable, DeadlinePassed, Invalid, NotFound, Unauthorized
from .issuer import Issuer, credential_status, iso, last_seen
from .logs import event
from .repository import Tx, open_store
from .verifier import UnreadableChunk, VerifierPool, default_size

T = TypeVar("T")
RACE_ATTEMPTS = 3  # an admin write's runs when concurrent ones keep winning (see _admin_write)


class CloudService:
    def __init__(self, config: CloudConfig):
        self.config = config
        # A PostgreSQL database is opened first: a bad URL is refused before the data folder is touched.
        store = open_store(config.database_url, config.db_path, pool_size=config.workers) \
            if config.database_url else None
        try:
            ensure_data_dir(config.data_dir)
            self.issuer = Issuer.from_key(load_or_create_issuer_key(config.issuer_key_path))
            self.admin_token = config.admin_token or load_or_create_admin_token(config.admin_token_path)
            store = store or open_store(None, config.db_path)
            _check_issuer(store, self.issuer, config)
        except BaseException:
            if store is not None:
                store.close()
            raise
        self.store = store
        self._pool: ThreadPoolExecutor | None = None
        size = default_size() if config.verify_workers is None else config.verify_workers
        self.verifier: VerifierPool | None = VerifierPool(size).start() if size > 0 else None
        self._loaded_keys: dict[str, Any] = {}  # agent keys loaded for checks run in this process
        self._down_since: float | None = None  # when `call` first met the database down (monotonic)

    # -- plumbing ---------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.config.clock()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a database call of an HTTP request in the service's threads. A database that does
        not answer is a 503 `database_unavailable` (not a 500 with a traceback per request), and
        its outage is logged once when it starts and once when a call succeeds again."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="cloud-db")
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))
        except Exception as exc:
            why = self.store.unavailable(exc)
            if why is None:
                raise
            if self._down_since is None:
                self._down_since = time.monotonic()
                event("database.unavailable", logging.WARNING, error=why)
            raise DatabaseUnavailable() from exc
        if self._down_since is not None:
            event("database.recovered", seconds=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
        return result

    @contextmanager
    def _writing(self, outlet_id: str) -> Iterator[Tx]:
        """A write transaction holding the outlet's lock from its start (see Tx.lock_outlet):
        its counter, chains, ledger tail and flags belong to this transaction alone, on every
        instance sharing the database."""
        with self.store.write() as tx:
            tx.lock_outlet(outlet_id)
            yield tx

    def _admin_write(self, work: Callable[[Tx], T], outlet_id: str | None = None) -> T:
        """An operator's write, run again from its start when a concurrent transaction won a race
        for the same row (PostgreSQL, several requests or instances at once): the new run sees the
        winner's row and answers as for any duplicate (merchant_exists, ...). A race lost every
        time is a 409 `concurrent_write`, never a 500."""
        for _ in range(RACE_ATTEMPTS):
            try:
                with self._writing(outlet_id) if outlet_id else self.store.write() as tx:
                    return work(tx)
            except Exception as exc:
                if not self.store.lost_race(exc):
                    raise
        raise Conflict("concurrent_write", "another request changed the same record at the same time; "
                       "send the request again")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.verifier is not None:
            self.verifier.close()
            self.verifier = None
        self.store.close()

    def issuer_info(self) -> dict:
        return {"public_key": self.issuer.public_key, "key_id": self.issuer.key_id, "algorithm": "Ed25519"}

    # -- admin ------------------------------------------------------------------------------

    def add_merchant(self, nif: str, name: str, taxpayer: dict | None = None) -> dict:
        merchant = self._admin_write(lambda tx: registry.add_merchant(tx, nif, name, taxpayer or {}, self.now()))
        event("merchant.added", nif=nif)
        return merchant

    def add_outlet(self, outlet_id: str, merchant_nif: str, name: str,
                   time_zone: str = "Africa/Kinshasa", isf: str | None = None) -> dict:
        outlet = self._admin_write(
            lambda tx: registry.add_outlet(tx, outlet_id, merchant_nif, name, time_zone, isf, self.now()))
        event("outlet.added", outlet_id=outlet_id, merchant_nif=merchant_nif)
        return outlet

    def create_token(self, outlet_id: str, ttl: timedelta | None = None) -> dict:
        with self.store.write() as tx:
            token, expires_at = registry.create_token(tx, outlet_id, ttl or self.config.token_ttl, self.now())
        event("enrollment_token.created", outlet_id=outlet_id, expires_at=expires_at)
        return {"outlet_id": outlet_id, "token": token, "expires_at": expires_at}

    def create_merchant_token(self, merchant_nif: str, ttl: timedelta | None = None) -> dict:
        """A read-only dashboard token for a merchant (cloud_stub/dashboard/access.py)."""
        from .dashboard.access import create_merchant_token

        result = create_merchant_token(self.store, merchant_nif, ttl or self.config.merchant_token_ttl, self.now())
        event("merchant_token.created", merchant_nif=merchant_nif, expires_at=result["expires_at"])
        return result

    def revoke_merchant_tokens(self, merchant_nif: str) -> dict:
        from .dashboard.access import revoke_merchant_tokens

        revoked = revoke_merchant_tokens(self.store, merchant_nif, self.now())
        event("merchant_token.revoked", merchant_nif=merchant_nif, revoked=revoked)
        return {"merchant_nif": merchant_nif, "revoked": revoked}

    def outlets(self) -> list[dict]:
        """Every outlet with its counter, agents, ledger size, open flags and when it was last
        heard from (`last_seen`: its newest upload, credential, heartbeat or MCF contact)."""
        with self.store.read() as tx:
            rows = tx.outlets()
        for r in rows:
            r["last_seen"] = last_seen(r)
            for column in ("issued_at", "device_last_seen", "heartbeat_at"):
                del r[column]
        return rows

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
            with self._writing(oid) as tx:
                new += audit.audit_outlet(tx, oid, self.now(), self.config.gap_grace)
        for flag_id in new:
            event("outlet.flagged", flag_id=flag_id)
        return new

    def verify_ledger(self, outlet_id: str) -> dict:
        with self.store.read() as tx:
            registry.get_outlet(tx, outlet_id)
            count, problems, archived = ledger.verify(tx, outlet_id)
        return {"outlet_id": outlet_id, "entries": count, "archived": archived, "valid": not problems,
                "problems": problems}

    def archive_ledger_month(self, month: str) -> dict:
        """Detach a past month's ledger partition and record what it held (PostgreSQL;
        ledger_partitions.archive_month). `month` is YYYY-MM."""
        return self.store.archive_ledger_month(_month(month), iso(self.now()))

    def ledger_archives(self) -> list[dict]:
        return self.store.ledger_archives()

    # -- agents -----------------------------------------------------------------------------

    def enroll(self, token: str, agent_public_key: str, label: str) -> dict:
        with self.store.write() as tx:
            agent, api_token, outlet = registry.enroll(tx, token, agent_public_key, label, self.now())
        event("agent.enrolled", agent_id=agent["id"], outlet_id=agent["outlet_id"],
              retired_agents=agent["retired"])
        return {"agent_id": agent["id"], "agent_token": api_token, "outlet": registry.outlet_view(outlet),
                "issuer_public_key": self.issuer.public_key, "issuer_key_id": self.issuer.key_id}

    def authenticate(self, api_token: str) -> dict | None:
        with self.store.lookup() as tx:  # one statement: every request of an agent runs it
            return registry.authenticate(tx, api_token)

    def heartbeat(self, agent: dict) -> dict:
        """An agent says it is running (it does every few minutes, sales or not): the outlet's
        "last seen" then tells a box that is off or offline from one that has no sales."""
        now = self.now()
        with self.store.write() as tx:  # the agent's own row: no counter, chain or ledger
            tx.record_heartbeat(agent["id"], iso(now))
        return {"agent_id": agent["id"], "received_at": iso(now)}

    def periodic_audit(self) -> list[int] | None:
        """The server's periodic gap detection: on one instance at a time among those sharing
        the database (None when another one is running it now). The ledger's next time
        partitions (PostgreSQL) are created on the same beat, under their own lock."""
        self.store.ensure_ledger_partitions(self.now())
        with self.store.run_once("audit") as mine:
            return self.audit() if mine else None

    def issue_credential(self, agent: dict, closure: BlockClosure | None = None,
                         block_size: int | None = None, request_id: str | None = None) -> tuple[dict, bool]:
        size = issuing.check_block_size(self.config.block_size if block_size is None else block_size,
                                        self.config.max_block_size)
        now = self.now()
        with self._writing(agent["outlet_id"]) as tx:
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
        with self._writing(agent["outlet_id"]) as tx:
            row = issuing.apply_closure(tx, agent, closure, now)
            audit.audit_outlet(tx, agent["outlet_id"], now, self.config.gap_grace)
        event("credential.closed", credential_id=closure.credential_id, last_used=closure.last_used)
        return credential_status(row, now)

    def credential(self, credential_id: str, outlet_id: str | None) -> dict:
        with self.store.read() as tx:
            row = issuing.credential_for(tx, credential_id, outlet_id)
        return credential_status(row, self.now())

    def seal(self, agent: dict, request: InvoiceRequest, isf: str | None = None,
             invoice_id: str | None = None, deadline: datetime | None = None) -> tuple[dict, bool]:
        """Seal online, once per request_id. With a `deadline`, a new seal is committed only while
        the deadline has not passed by this service's clock, checked last inside the sealing
        transaction: an agent that waited past it (plus its clock margin) knows that this attempt
        sealed nothing, and may seal the sale with another signer."""
        now = self.now()
        if deadline is not None and now > deadline:
            raise DeadlinePassed("deadline_passed", "the agent's deadline passed before this request arrived; "
                                 "nothing was sealed")
        with self.store.lookup() as tx:
            outlet = registry.get_outlet(tx, agent["outlet_id"])
        chosen_isf = signer.resolve_isf(outlet, isf)
        lines, totals = signer.compute_totals(request, outlet, now)  # pure: outside the write lock
        try:
            with self._writing(outlet["id"]) as tx:
                invoice, created = signer.seal(tx, self.issuer, outlet, request, isf=chosen_isf,
                                               invoice_id=invoice_id, lines=lines, totals=totals, now=now)
                if created and deadline is not None and self.now() > deadline:
                    # Raised inside the transaction: it rolls back, the number is not taken.
                    raise DeadlinePassed("deadline_passed", "the agent's deadline passed while sealing; "
                                         "nothing was sealed")
        except signer.CreditRefused as exc:
            # The refusal rolled the seal back; the flag is its own transaction, so it stays.
            with self._writing(outlet["id"]) as tx:
                flag_id = audit.flag_numbers(tx, outlet["id"], exc.kind, signer.authority_id(outlet["id"]), [],
                                             f"online seal refused (request_id {request.request_id}): {exc.detail}",
                                             now)
            if flag_id is not None:
                event("outlet.flagged", outlet_id=outlet["id"], flag_id=flag_id)
            raise
        if created:
            event("invoice.sealed", outlet_id=outlet["id"], fiscal_number=invoice["security"]["fiscal_number"])
        return invoice, created

    def ping(self) -> None:
        """One read transaction: raises when the database does not answer (health)."""
        with self.store.read() as tx:
            tx.ping()

    def superseded(self, agent: dict, request_id: str, authority_id: str, fiscal_number: int) -> dict:
        """The agent gave up waiting for an online seal (no answer past its deadline) and sealed
        the sale with another signer. If the cloud did seal that request — before the deadline,
        its answer lost on the way — the sale now holds two fiscal numbers: the outlet is flagged
        `double_seal` for audit, naming both. Otherwise nothing was sealed here, and since the
        cloud never commits a seal after its deadline, never will be."""
        now = self.now()
        outlet_id = agent["outlet_id"]
        with self._writing(outlet_id) as tx:  # the flag's duplicate check holds across instances
            done = tx.seal_request(outlet_id, request_id)
            if done is None:
                return {"request_id": request_id, "sealed": False}
            invoice = json.loads(tx.ledger_invoice(done["ledger_id"]))
            ours = invoice["security"]["fiscal_number"]
            flag_id = audit.flag_numbers(
                tx, outlet_id, "double_seal", signer.authority_id(outlet_id), [ours],
                f"request_id {request_id}: sealed online as {ours} (answer lost) and by the agent as "
                f"{authority_id} {fiscal_number}", now)
        if flag_id is not None:
            event("outlet.flagged", outlet_id=outlet_id, flag_id=flag_id, reason="double_seal")
        return {"request_id": request_id, "sealed": True, "fiscal_number": ours, "invoice_id": invoice["id"]}

    def reconcile_upload(self, agent: dict, raw: bytes) -> dict:
        """`POST /v1/reconcile` with the body as received.

        A large upload laid out as agents send it is cut into chunks for the verifier's workers
        without being parsed here (bodies.split_upload); anything else, or a cut that turns out
        wrong, is parsed whole, with the usual answers for a bad body.
        """
        cfg = self.config
        if self.verifier is not None:
            upload = bodies.split_upload(raw, self.verifier.size * cfg.chunks_per_worker,
                                         cfg.parallel_min_batch, cfg.max_batch)
            if upload is not None:
                verifier = self.verifier
                try:
                    return self._reconcile(agent, upload.credential_ids,
                                           lambda keys: verifier.checking(upload.chunks, keys))
                except UnreadableChunk:
                    pass  # rolled back, nothing written: parse it whole, which says what is wrong
        return self.reconcile(agent, bodies.reconcile_invoices(raw, cfg.max_batch))

    def reconcile(self, agent: dict, invoices: list[Any]) -> dict:
        """Reconcile a batch of invoices already parsed (JSON values, as `json.loads` gives them)."""
        credential_ids = {sec["authority_id"] for raw in invoices
                          if isinstance(raw, dict) and isinstance(sec := raw.get("security"), dict)
                          and isinstance(sec.get("authority_id"), str)}
        verifier = self.verifier
        if verifier is not None and len(invoices) >= self.config.parallel_min_batch:
            payloads = _json_chunks(invoices, verifier.size * self.config.chunks_per_worker)
            if payloads is not None:
                return self._reconcile(agent, credential_ids, lambda keys: verifier.checking(payloads, keys))
        return self._reconcile(agent, credential_ids, lambda keys: nullcontext(self._check_here(invoices, keys)))

    def _reconcile(self, agent: dict, credential_ids: Iterable[str],
                   checking: Callable[[dict[str, str]], ContextManager[Iterator[list[Checked]]]]) -> dict:
        """One batch: `checking(keys)` runs the pure checks (in the verifier or here) and yields
        their records chunk by chunk; the sequential checks and the ledger take one transaction."""
        now = self.now()
        with self.store.read() as tx:
            outlet_id = registry.get_outlet(tx, agent["outlet_id"])["id"]
            keys = _signer_keys(tx, outlet_id, credential_ids)
        with checking(keys) as chunks:  # with the verifier, the workers start now
            with self._writing(outlet_id) as tx:
                outlet = registry.get_outlet(tx, agent["outlet_id"])
                outcomes, rule_flags = reconcile.reconcile_batch(tx, self.issuer, outlet,
                                                                 _at_most(chunks, self.config.max_batch), keys, now)
                new_flags = rule_flags + audit.audit_outlet(tx, outlet["id"], now, self.config.gap_grace)
        counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("accepted", "duplicate", "rejected")}
        event("reconcile.batch", outlet_id=outlet["id"], agent_id=agent["id"], **counts,
              new_flags=len(new_flags))
        for flag_id in new_flags:
            event("outlet.flagged", outlet_id=outlet["id"], flag_id=flag_id)
        return {"outlet_id": outlet["id"], **counts, "results": [o.as_dict() for o in outcomes]}

    def _check_here(self, invoices: list[Any], keys: dict[str, str]) -> Iterator[list[Checked]]:
        yield [Checked(*checks.check(raw, keys, self._loaded_keys)) for raw in invoices]

    def bind_device(self, outlet_id: str, mid: str, nif: str, status: str = "active",
                    firmware: dict | None = None) -> tuple[dict, bool]:
        """The operator binds an MCF to an outlet (admin API, CLI)."""
        device, created = self._admin_write(
            lambda tx: registry.bind_device(tx, outlet_id, mid, nif, status, firmware or {}, self.now(),
                                            bound_by="admin"), outlet_id)
        event("device.bound" if created else "device.updated", outlet_id=outlet_id, mid=mid, by="admin")
        return device, created

    def unbind_device(self, outlet_id: str, mid: str) -> dict:
        with self._writing(outlet_id) as tx:
            device = registry.unbind_device(tx, outlet_id, mid, self.now())
        event("device.unbound", outlet_id=outlet_id, mid=mid)
        return device

    def create_provisioning_token(self, outlet_id: str, ttl: timedelta | None = None) -> dict:
        with self.store.write() as tx:
            token, expires_at = registry.create_provisioning_token(tx, outlet_id, ttl or self.config.token_ttl,
                                                                   self.now())
        event("provisioning_token.created", outlet_id=outlet_id, expires_at=expires_at)
        return {"outlet_id": outlet_id, "token": token, "expires_at": expires_at}

    def provision_with_token(self, token: str, mid: str, nif: str, status: str = "active",
                             firmware: dict | None = None, outlet_id: str | None = None) -> tuple[dict, bool]:
        """A technician binds an MCF with a provisioning token the operator issued for the outlet."""
        now = self.now()

        def provision(tx: Tx) -> tuple[dict, dict, bool]:
            row = registry.provisioning_outlet(tx, token, now)
            if row is None:
                raise Unauthorized("unauthorized", "unknown or expired provisioning token")
            if outlet_id is not None and outlet_id != row["outlet_id"]:
                raise NotFound("outlet_not_found", f"no outlet {outlet_id}")
            return (row, *registry.provision_with_token(tx, row, mid, nif, status, firmware or {}, now))
        row, device, created = self._admin_write(provision)
        event("device.bound" if created else "device.updated", outlet_id=row["outlet_id"], mid=mid,
              by="provisioning-token")
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


def _check_issuer(store, issuer: Issuer, config: CloudConfig) -> None:
    """Refuse to serve a database whose credentials another issuer key signed.

    Every instance on one PostgreSQL database must hold the same `issuer-key.pem`: one with a
    key of its own would sign credentials the others reject, and reject theirs."""
    with store.read() as tx:
        document = tx.last_issued_document()
    if document is None:
        return
    try:
        theirs = json.loads(document)["issuer_key_id"]
    except (ValueError, KeyError, TypeError):
        return  # a damaged document is reconciliation's finding, not a reason to refuse to start
    if theirs != issuer.key_id:
        raise Conflict("issuer_key_mismatch",
                       f"this database's credentials are signed by issuer key {theirs}, but "
                       f"{config.issuer_key_path} is key {issuer.key_id}: give every instance the same "
                       "issuer-key.pem (docs/operations.md, \"The cloud on PostgreSQL\")")


def _signer_keys(tx: Tx, outlet_id: str, credential_ids: Iterable[str]) -> dict[str, str]:
    """{credential id: agent public key} for the outlet's credentials among `credential_ids`.

    The pure checks verify delegated signatures with these; an id missing here (not issued,
    another outlet's, not spotted in the body) is checked, if it ever matters, in this process.
    Documents never change once issued, so reading them before the batch's transaction is safe.
    """
    keys: dict[str, str] = {}
    for credential_id, document in tx.credential_documents(outlet_id, sorted(credential_ids)).items():
        try:
            keys[credential_id] = json.loads(document)["agent_public_key"]
        except (ValueError, KeyError, TypeError):  # the sequential checks meet this document's problem
            pass
    return keys


def _json_chunks(invoices: list[Any], parts: int) -> list[bytes] | None:
    """Parsed invoices as JSON array texts for the verifier (None if they are not JSON values).

    ASCII escapes keep every string exact through the round trip, lone surrogates included.
    """
    size = -(-len(invoices) // max(1, parts))
    try:
        return [json.dumps(invoices[i:i + size], ensure_ascii=True, separators=(",", ":")).encode("ascii")
                for i in range(0, len(invoices), size)]
    except (TypeError, ValueError):
        return None


def _at_most(chunks: Iterable[list[Checked]], max_batch: int) -> Iterator[list[Checked]]:
    """The chunks, refusing the batch (and so rolling it back) once it has too many invoices:
    an upload cut into chunks is counted only as its chunks are parsed."""
    count = 0
    for records in chunks:
        count += len(records)
        if count > max_batch:
            raise bodies.batch_too_large(max_batch)
        yield records


def _month(text: str) -> date:
    """YYYY-MM as the first day of that month, or a clear refusal."""
    month = ledger_partitions.month_of(text) if len(text) == 7 else None
    if month is None:
        raise Invalid("bad_month", f"a month is written YYYY-MM (e.g. 2026-01), not {text!r}")
    return month
