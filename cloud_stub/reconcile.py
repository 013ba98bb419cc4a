"""Reconciliation: verify sealed invoices uploaded by an agent and append them to the ledger.

The rules and the decisions behind them are in docs/cloud-api.md ("Reconciliation"). In short,
per invoice and in this order: shape → outlet → content hash → duplicate/conflict by fiscal
number → mode-specific checks → the amounts (the tax engine's) → a credit note's original →
chain link → append. A batch is one transaction.

The work is split in two stages. What needs no database (shape, content hash, encoded forms,
the delegated signature) is done by `checks.py`, possibly in the verifier's worker processes,
and arrives here as `Checked` records, chunk by chunk in batch order. What needs the ledger and
the registry (this module) runs here, in order, inside the batch's transaction; it decides every
outcome, in the order above, so the answer is the same wherever the pure checks ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from fiscal.protocol import GENESIS_HASH
from fiscal.credential import DelegatedCredential
from fiscal.seal import credential_qr_part

from . import audit, credits, ledger
from .checks import Checked, Rejected, stored_seal_problems
from .kpis import DayFigures
from .issuer import Issuer, iso, parse_iso
from .repository import Tx
from .signer import authority_id as cloud_authority

__all__ = ["Outcome", "Rejected", "reconcile_batch", "rejection_view"]


@dataclass
class Outcome:
    index: int
    status: str  # accepted | duplicate | rejected
    fiscal_number: int | None = None
    authority_id: str | None = None
    id: str | None = None
    reason: str | None = None
    detail: str | None = None
    ledger_seq: int | None = None
    flag: str | None = None  # accepted but flagged (an unregistered device)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        for key, value in (("fiscal_number", self.fiscal_number), ("authority_id", self.authority_id),
                           ("id", self.id), ("reason", self.reason), ("detail", self.detail),
                           ("ledger_seq", self.ledger_seq), ("flag", self.flag)):
            if value is not None:
                out[key] = value
        return out


class _Batch:
    """What one batch reads once and keeps up to date itself, inside its transaction.

    The ledger rows it appends are buffered and written with one `executemany` at the end of the
    batch (still inside the transaction, before gap detection); every read of the ledger the
    batch makes (number keys, chain heads, the ledger tail) goes through these caches, which
    include the buffered rows.
    """

    def __init__(self, tx: Tx, outlet_id: str, now: datetime, keys: Mapping[str, str]):
        self.tx = tx
        self.outlet_id = outlet_id
        self.now = now
        self.recorded_at = iso(now)
        self.keys = keys  # the agent keys the pure checks verified signatures with
        self.credentials: dict[str, _Credential | None] = {}
        self.numbers: dict[str, dict | None] = {}  # number_key -> {outlet_id, invoice_hash} or None
        self.heads: dict[str, dict | None] = {}  # chain_key -> {fiscal_number, invoice_hash} or None
        self.tail: dict | None = None
        self.tail_loaded = False
        self.rows: list[tuple] = []
        self.codes: list[tuple] = []  # the appended rows' `invoice_codes` rows, written with them
        self.figures = DayFigures(outlet_id, self.recorded_at)  # their `kpi_days`, written with them
        self.bound: dict[str, bool] = {}  # MID -> bound to this outlet by the operator
        self.unregistered: dict[str, list[int]] = {}  # MID -> numbers accepted from it unbound
        self.new_flags: list[int] = []

    def prefetch_numbers(self, records: list[Checked]) -> None:
        """Read, in one query, the number keys of a chunk that the batch does not know yet.

        Keys already known stay as they are: they may be rows this batch appended (buffered,
        not yet in the table).
        """
        numbers = self.numbers
        keys = {ledger.number_key_of(self.outlet_id, r.mode, r.authority_id, r.fiscal_number)
                for r in records if r.invalid is None}
        keys.update(ledger.legacy_device_number_key(r.authority_id, r.fiscal_number)
                    for r in records if r.invalid is None and r.mode == "device")
        keys -= numbers.keys()
        if keys:
            numbers.update(dict.fromkeys(keys))
            numbers.update(self.tx.by_number_keys(list(keys)))

    def existing(self, key: str) -> dict | None:
        if key in self.numbers:
            return self.numbers[key]
        return self.tx.by_number_key(key)

    def existing_device(self, key: str, rec: Checked) -> dict | None:
        """A device number in the ledger: keyed per outlet, or by MID alone before version 2 (then
        only this outlet's entry counts: another tenant's is none of its business)."""
        found = self.existing(key)
        if found is None:
            found = self.existing(ledger.legacy_device_number_key(rec.authority_id, rec.fiscal_number))
            if found is not None and found["outlet_id"] != self.outlet_id:
                found = None
        return found

    def head(self, key: str, rec: Checked) -> dict | None:
        if key not in self.heads:
            head = self.tx.chain_head(key)
            if head is None and rec.mode == "device":  # a chain begun before version 2 goes on
                head = self.tx.chain_head_in_outlet(ledger.legacy_device_chain_key(rec.authority_id),
                                                    self.outlet_id)
            self.heads[key] = head
        return self.heads[key]

    def device_bound(self, mid: str, merchant_nif: str) -> bool:
        if mid not in self.bound:
            row = self.tx.device(self.outlet_id, mid)
            self.bound[mid] = row is not None and row["unbound_at"] is None and row["nif"] == merchant_nif
        return self.bound[mid]

    def append(self, rec: Checked, number_key: str, chain_key: str, state: str) -> int:
        if not self.tail_loaded:
            self.tail, self.tail_loaded = self.tx.ledger_tail(self.outlet_id), True
        tail = self.tail
        seq = tail["seq"] + 1 if tail else 1
        prev = tail["ledger_hash"] if tail else GENESIS_HASH
        mode, authority, number, invoice_hash = rec.mode, rec.authority_id, rec.fiscal_number, rec.chain_hash
        ledger_hash = ledger.entry_hash(prev, self.outlet_id, seq, self.recorded_at, mode, authority, number,
                                        invoice_hash)
        self.rows.append((self.outlet_id, seq, self.recorded_at, mode, rec.type, authority, number,
                          number_key, chain_key, rec.sealed_at, invoice_hash,
                          prev, ledger_hash, rec.stored, state))
        self.codes.append((self.outlet_id, rec.code, rec.type, rec.total, rec.reference_code))
        if state != ledger.UNREGISTERED_DEVICE:
            self.figures.add(rec.sealed_at, rec.type, rec.total)
        self.tail = {"seq": seq, "ledger_hash": ledger_hash}
        self.numbers[number_key] = {"outlet_id": self.outlet_id, "invoice_hash": invoice_hash}
        self.heads[chain_key] = {"fiscal_number": number, "invoice_hash": invoice_hash}
        return seq

    def flush(self) -> None:
        if self.rows:
            self.tx.append_many(self.rows)
            self.rows = []
        self.flush_codes()
        self.figures.write(self.tx)

    def flush_codes(self) -> None:
        """Write the buffered code rows: before a credit note reads them, and with the entries."""
        if self.codes:
            self.tx.insert_codes(self.codes)
            self.codes = []

    def flag(self, reason: str, rec: Checked, detail: str) -> None:
        credential = rec.authority_id if rec.mode == "delegated" else None
        flag_id = audit.flag_numbers(self.tx, self.outlet_id, reason, rec.authority_id, [rec.fiscal_number],
                                     detail, self.now, credential)
        if flag_id is not None:
            self.new_flags.append(flag_id)

    def flag_unregistered(self) -> None:
        for mid, numbers in self.unregistered.items():
            flag_id = audit.flag_numbers(
                self.tx, self.outlet_id, "unregistered_device", mid, numbers,
                f"invoices of device {mid}, which the operator has not bound to this outlet: stored, "
                "kept out of the outlet's totals", self.now)
            if flag_id is not None:
                self.new_flags.append(flag_id)


# Rejections that are not an agent's mistake but a rule of the tax the invoice breaks, though its
# seal verified: the outlet is flagged for audit.
FLAGGED_REASONS = frozenset({"invoice_refused", "lines_mismatch", "groups_mismatch", "totals_mismatch",
                             "unknown_original", "original_is_credit_note", "credit_exceeds_original"})


def reconcile_batch(tx: Tx, issuer: Issuer, outlet: dict, chunks: Iterable[list[Checked]],
                    keys: Mapping[str, str], now: datetime) -> tuple[list[Outcome], list[int]]:
    """Outcomes of a batch, whose pure checks arrive as `chunks` (in batch order), and the ids
    of the flags it raised.

    `keys` are the agent keys the pure checks were given (credential id → public key text).
    """
    batch = _Batch(tx, outlet["id"], now, keys)
    outcomes: list[Outcome] = []
    with tx.writes_deferred():
        _reconcile_chunks(batch, issuer, outlet, chunks, outcomes, now)
    batch.flag_unregistered()
    return outcomes, batch.new_flags


def _reconcile_chunks(batch: _Batch, issuer: Issuer, outlet: dict, chunks: Iterable[list[Checked]],
                      outcomes: list[Outcome], now: datetime) -> None:
    tx = batch.tx
    for records in chunks:
        batch.prefetch_numbers(records)
        # The previous chunk's rows are written now, after this chunk's read: on PostgreSQL the
        # server inserts them while this process checks this chunk (Tx.writes_deferred), instead
        # of the two waiting for each other. Until then they are in the batch's caches, which
        # every read of the ledger goes through (the prefetch skips the keys they hold).
        batch.flush()
        for rec in records:
            outcome = Outcome(len(outcomes), "rejected", id=rec.id)
            try:
                if rec.invalid is not None:
                    raise Rejected("invalid", rec.invalid)
                outcome.fiscal_number, outcome.authority_id = rec.fiscal_number, rec.authority_id
                outcome.status, outcome.ledger_seq, outcome.flag = _reconcile_one(batch, issuer, outlet, rec)
            except Rejected as exc:
                outcome.status, outcome.reason, outcome.detail = "rejected", exc.reason, exc.detail
                _record_rejection(tx, outlet["id"], rec, exc, now)
                if exc.reason in FLAGGED_REASONS:
                    batch.flag(exc.reason, rec, exc.detail)
            outcomes.append(outcome)
    batch.flush()


def _reconcile_one(batch: _Batch, issuer: Issuer, outlet: dict,
                   rec: Checked) -> tuple[str, int | None, str | None]:
    """(status, ledger seq, flag) of one invoice, or Rejected."""
    tx = batch.tx
    if rec.outlet_id != outlet["id"]:
        raise Rejected("wrong_outlet", "the invoice names another outlet than the caller's")
    if rec.merchant_nif != outlet["merchant_nif"]:
        raise Rejected("wrong_merchant", "the invoice names another NIF than the outlet's merchant")
    if rec.chain_hash != rec.content_hash:
        raise Rejected("hash_mismatch", "chain.hash does not match the invoice content")

    mode = rec.mode
    number_key = ledger.number_key_of(outlet["id"], mode, rec.authority_id, rec.fiscal_number)
    existing = batch.existing_device(number_key, rec) if mode == "device" else batch.existing(number_key)
    if existing is not None:
        if existing["invoice_hash"] == rec.chain_hash:
            return "duplicate", None, None
        raise Rejected("conflict", "this fiscal number is already in the ledger with different content")

    state = ledger.VERIFIED
    if mode == "delegated":
        _check_delegated(batch, issuer, outlet, rec)
    elif mode == "device":
        # The MCF's security elements are recorded as they are: the cloud cannot re-derive SIG.
        bound = batch.device_bound(rec.authority_id, outlet["merchant_nif"])
        state = ledger.DEVICE_ATTESTED if bound else ledger.UNREGISTERED_DEVICE
    else:  # cloud: every invoice the cloud sealed is already in the ledger (found above)
        if rec.authority_id != cloud_authority(outlet["id"]):
            raise Rejected("not_sealed_by_cloud", "the authority is not this outlet's cloud signer")
        raise Rejected("not_sealed_by_cloud", "the cloud never sealed an invoice with this number")

    if rec.arith is not None:  # the tax engine's amounts, computed by the pure checks
        raise Rejected(rec.arith, rec.arith_detail)
    if rec.type in credits.CREDIT_TYPES:
        batch.flush_codes()  # an original appended earlier in this batch counts
        found = credits.problem(tx, outlet["id"], rec.type, rec.reference_code, rec.total)
        if found is not None:
            raise Rejected(*found)

    chain_key = ledger.chain_key_of(outlet["id"], mode, rec.authority_id)
    _check_chain(batch, chain_key, rec)
    seq = batch.append(rec, number_key, chain_key, state)
    if state == ledger.UNREGISTERED_DEVICE:
        batch.unregistered.setdefault(rec.authority_id, []).append(rec.fiscal_number)
        return "accepted", seq, ledger.UNREGISTERED_DEVICE
    if mode == "device":
        tx.touch_device(outlet["id"], rec.authority_id, batch.recorded_at)
    return "accepted", seq, None


@dataclass(frozen=True)
class _Credential:
    """A credential row with what every invoice of a batch needs from it, computed once."""

    row: dict
    doc: DelegatedCredential
    issuer_ok: bool
    qr_part: str
    revoked_at: datetime | None
    # The validity window in UTC: `doc.valid_at` compares the same instants, but comparing
    # datetimes of two time zones costs an offset lookup each time.
    not_before: datetime
    not_after: datetime


def _credential(batch: _Batch, issuer: Issuer, credential_id: str) -> _Credential | None:
    cache = batch.credentials
    if credential_id not in cache:
        row = batch.tx.credential(credential_id)
        if row is None:
            cache[credential_id] = None
        else:
            doc = DelegatedCredential.model_validate_json(row["document"])
            cache[credential_id] = _Credential(row, doc, doc.verify(issuer.public_key), credential_qr_part(doc),
                                               parse_iso(row["revoked_at"]) if row["revoked_at"] else None,
                                               doc.not_before.astimezone(timezone.utc),
                                               doc.not_after.astimezone(timezone.utc))
    return cache[credential_id]


def _check_delegated(batch: _Batch, issuer: Issuer, outlet: dict, rec: Checked) -> None:
    found = _credential(batch, issuer, rec.authority_id)
    if found is None:
        raise Rejected("unknown_credential", f"no credential {rec.authority_id} was issued by this cloud")
    row, cred = found.row, found.doc
    if row["outlet_id"] != outlet["id"]:
        raise Rejected("foreign_credential", "the credential was issued to another outlet")
    if not found.issuer_ok:
        raise Rejected("bad_credential", "the stored credential does not verify with the issuer key")
    moment = datetime.fromisoformat(rec.timestamp)
    if found.revoked_at is not None and moment >= found.revoked_at:
        raise Rejected("credential_revoked", f"sealed at {rec.timestamp}, after the credential's "
                       f"revocation ({row['revoked_at']})")
    problems = rec.problems
    if problems is None or batch.keys.get(rec.authority_id) != cred.agent_public_key:
        # Not checked by the pure stage (or against another key): check it here, the same way.
        problems = stored_seal_problems(rec, cred.agent_public_key)
    if problems:
        raise Rejected("bad_signature", "; ".join(problems))
    if not rec.qr_payload.endswith(";" + found.qr_part) or rec.qr_payload.count(";") != 15:
        raise Rejected("bad_signature", "the QR payload does not carry this credential")
    number = rec.fiscal_number
    if not cred.block_start <= number <= cred.block_end:
        raise Rejected("outside_block", f"fiscal number {number} is outside the credential's block "
                       f"[{cred.block_start}, {cred.block_end}]")
    if row["closed_last_used"] is not None and number > row["closed_last_used"]:
        raise Rejected("voided_number", f"fiscal number {number} is after the block's closure "
                       f"(last used {row['closed_last_used']})")
    if not found.not_before <= moment < found.not_after:  # cred.valid_at(moment)
        raise Rejected("outside_window", f"sealed at {rec.timestamp}, outside the credential's "
                       f"validity [{cred.not_before.isoformat()}, {cred.not_after.isoformat()})")


def _check_chain(batch: _Batch, key: str, rec: Checked) -> None:
    head = batch.head(key, rec)
    expected = head["invoice_hash"] if head else GENESIS_HASH
    number = rec.fiscal_number
    if rec.prev_hash != expected:
        where = f"after number {head['fiscal_number']}" if head else "at the start of the chain"
        raise Rejected("chain_break", f"prev_hash does not link to the last reconciled invoice of {key} "
                       f"({where}); send invoices in sealing order")
    if head is not None and number <= head["fiscal_number"]:
        raise Rejected("chain_break", f"fiscal number {number} does not follow {head['fiscal_number']}")


def _record_rejection(tx: Tx, outlet_id: str, rec: Checked, exc: Rejected, now: datetime) -> None:
    tx.insert_rejection(outlet_id, rec.trace_mode, rec.trace_authority, rec.trace_number, exc.reason, exc.detail,
                        rec.trace_hash, iso(now))


def rejection_view(row: dict) -> dict:
    return {k: row[k] for k in ("id", "mode", "authority_id", "fiscal_number", "reason", "detail",
                                "invoice_hash", "received_at")}

