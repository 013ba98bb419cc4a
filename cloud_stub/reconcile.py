"""Reconciliation: verify sealed invoices uploaded by an agent and append them to the ledger.

The rules and the decisions behind them are in docs/cloud-api.md ("Reconciliation"). In short,
per invoice and in this order: shape → outlet → content hash → duplicate/conflict by fiscal
number → mode-specific checks → chain link → append. A batch is one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agent.api.problems import validation_errors
from agent.fiscal.canonical import GENESIS_HASH
from agent.fiscal.credential import DelegatedCredential
from agent.fiscal.models import SealedInvoice
from agent.fiscal.seal import chain_hash, credential_qr_part, verify_stalela_seal
from agent.fiscal.signing import load_public_key

from . import fastpath, ledger
from .issuer import Issuer, iso, parse_iso
from .repository import Tx
from .signer import authority_id as cloud_authority


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        for key, value in (("fiscal_number", self.fiscal_number), ("authority_id", self.authority_id),
                           ("id", self.id), ("reason", self.reason), ("detail", self.detail),
                           ("ledger_seq", self.ledger_seq)):
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

    def __init__(self, tx: Tx, outlet_id: str, now: datetime):
        self.tx = tx
        self.outlet_id = outlet_id
        self.now = now
        self.recorded_at = iso(now)
        self.credentials: dict[str, _Credential | None] = {}
        self.numbers: dict[str, dict | None] = {}  # number_key -> {outlet_id, invoice_hash} or None
        self.heads: dict[str, dict | None] = {}  # chain_key -> {fiscal_number, invoice_hash} or None
        self.tail: dict | None = None
        self.tail_loaded = False
        self.rows: list[tuple] = []

    def prefetch_numbers(self, invoices: list[Any]) -> None:
        keys = set()
        for raw in invoices:
            try:
                keys.add(ledger.number_key(self.outlet_id, raw))
            except Exception:  # not even shaped like an invoice: the per-invoice checks say why
                continue
        self.numbers.update(dict.fromkeys(keys))
        self.numbers.update(self.tx.by_number_keys(list(keys)))

    def existing(self, key: str) -> dict | None:
        if key in self.numbers:
            return self.numbers[key]
        return self.tx.by_number_key(key)

    def head(self, key: str) -> dict | None:
        if key not in self.heads:
            self.heads[key] = self.tx.chain_head(key)
        return self.heads[key]

    def append(self, invoice: dict, forms: fastpath.Forms | None) -> int:
        if not self.tail_loaded:
            self.tail, self.tail_loaded = self.tx.ledger_tail(self.outlet_id), True
        tail = self.tail
        seq = tail["seq"] + 1 if tail else 1
        prev = tail["ledger_hash"] if tail else GENESIS_HASH
        sec = invoice["security"]
        mode, authority, number = invoice["mode"], sec["authority_id"], sec["fiscal_number"]
        invoice_hash = invoice["chain"]["hash"]
        number_key, chain_key = ledger.number_key(self.outlet_id, invoice), ledger.chain_key(self.outlet_id, invoice)
        ledger_hash = ledger.entry_hash(prev, self.outlet_id, seq, self.recorded_at, mode, authority, number,
                                        invoice_hash)
        stored = forms.stored if forms is not None else ledger.stored_text(invoice)
        self.rows.append((self.outlet_id, seq, self.recorded_at, mode, invoice["type"], authority, number,
                          number_key, chain_key, iso(datetime.fromisoformat(sec["timestamp"])), invoice_hash,
                          prev, ledger_hash, stored))
        self.tail = {"seq": seq, "ledger_hash": ledger_hash}
        self.numbers[number_key] = {"outlet_id": self.outlet_id, "invoice_hash": invoice_hash}
        self.heads[chain_key] = {"fiscal_number": number, "invoice_hash": invoice_hash}
        return seq

    def flush(self) -> None:
        if self.rows:
            self.tx.append_many(self.rows)
            self.rows = []


def reconcile_batch(tx: Tx, issuer: Issuer, outlet: dict, invoices: list[Any], now: datetime) -> list[Outcome]:
    batch = _Batch(tx, outlet["id"], now)
    batch.prefetch_numbers(invoices)
    outcomes = []
    for index, raw in enumerate(invoices):
        outcome = Outcome(index, "rejected")
        if isinstance(raw, dict):
            outcome.id = raw.get("id") if isinstance(raw.get("id"), str) else None
        try:
            invoice, content_hash, forms = _check_shape(raw)
            sec = invoice["security"]
            outcome.fiscal_number, outcome.authority_id = sec["fiscal_number"], sec["authority_id"]
            outcome.status, outcome.ledger_seq = _reconcile_one(batch, issuer, outlet, invoice, content_hash,
                                                                forms)
        except Rejected as exc:
            outcome.status, outcome.reason, outcome.detail = "rejected", exc.reason, exc.detail
            _record_rejection(tx, outlet["id"], raw, exc, now)
        outcomes.append(outcome)
    batch.flush()
    return outcomes


def _check_shape(raw: Any) -> tuple[dict, str, fastpath.Forms | None]:
    """The invoice as it will be stored, the hash of its content, and its encoded forms if fast."""
    if isinstance(raw, dict) and fastpath.well_formed(raw):
        # The model would accept it (see fastpath): the same checks as below, one encoding.
        invoice = _check_fields(raw)
        try:
            forms = fastpath.forms(invoice)
        except Exception:  # e.g. an unpaired surrogate: the general path decides, as before
            pass
        else:
            return invoice, forms.content_hash, forms
    invoice, content_hash = _check_shape_general(raw)
    return invoice, content_hash, None


def _check_shape_general(raw: Any) -> tuple[dict, str]:
    if not isinstance(raw, dict):
        raise Rejected("invalid", "an invoice must be a JSON object")
    try:
        SealedInvoice.model_validate(raw)
    except ValidationError as exc:
        first = validation_errors(exc)[0]
        raise Rejected("invalid", f"{first['field']}: {first['message']}") from None
    invoice = _check_fields(raw)
    try:
        return invoice, chain_hash(invoice)
    except ValueError as exc:  # e.g. an integer beyond RFC 8785's range
        raise Rejected("invalid", f"the invoice cannot be canonicalized: {exc}") from None


def _check_fields(raw: dict) -> dict:
    """The checks after the model's: on an invoice the model accepts."""
    try:
        moment = datetime.fromisoformat(raw["security"]["timestamp"])
    except ValueError:
        raise Rejected("invalid", "security.timestamp is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise Rejected("invalid", "security.timestamp has no UTC offset")
    if not raw["chain"].get("hash"):
        raise Rejected("invalid", "chain.hash is missing")
    number = raw["security"]["fiscal_number"]
    if type(number) is not int or number < 1:  # the identity of the invoice: no 5.0, no true
        raise Rejected("invalid", "security.fiscal_number must be a positive integer")
    # What is stored is the invoice exactly as sealed, minus the agent's local sync state.
    return {k: v for k, v in raw.items() if k != "sync"}


def _reconcile_one(batch: _Batch, issuer: Issuer, outlet: dict, invoice: dict, content_hash: str,
                   forms: fastpath.Forms | None) -> tuple[str, int | None]:
    tx = batch.tx
    if invoice["outlet_id"] != outlet["id"]:
        raise Rejected("wrong_outlet", "the invoice names another outlet than the caller's")
    if invoice["merchant_nif"] != outlet["merchant_nif"]:
        raise Rejected("wrong_merchant", "the invoice names another NIF than the outlet's merchant")
    if invoice["chain"]["hash"] != content_hash:
        raise Rejected("hash_mismatch", "chain.hash does not match the invoice content")

    mode = invoice["mode"]
    existing = batch.existing(ledger.number_key(outlet["id"], invoice))
    if existing is not None:
        if existing["outlet_id"] != outlet["id"]:  # a device number: only its own outlet may know it
            _check_device(tx, outlet, invoice)
        if existing["invoice_hash"] == invoice["chain"]["hash"]:
            return "duplicate", None
        raise Rejected("conflict", "this fiscal number is already in the ledger with different content")

    if mode == "delegated":
        _check_delegated(batch, issuer, outlet, invoice, forms)
    elif mode == "device":
        _check_device(tx, outlet, invoice)
    else:  # cloud: every invoice the cloud sealed is already in the ledger (found above)
        if invoice["security"]["authority_id"] != cloud_authority(outlet["id"]):
            raise Rejected("not_sealed_by_cloud", "the authority is not this outlet's cloud signer")
        raise Rejected("not_sealed_by_cloud", "the cloud never sealed an invoice with this number")

    _check_chain(batch, outlet["id"], invoice)
    seq = batch.append(invoice, forms)
    if mode == "device":
        tx.touch_device(invoice["security"]["authority_id"], batch.recorded_at)
    return "accepted", seq


@dataclass(frozen=True)
class _Credential:
    """A credential row with what every invoice of a batch needs from it, computed once."""

    row: dict
    doc: DelegatedCredential
    issuer_ok: bool
    qr_part: str
    revoked_at: datetime | None
    public_key: Any  # the agent's key, loaded (None if it does not load: the general path says why)


def _credential(batch: _Batch, issuer: Issuer, credential_id: str) -> _Credential | None:
    cache = batch.credentials
    if credential_id not in cache:
        row = batch.tx.credential(credential_id)
        if row is None:
            cache[credential_id] = None
        else:
            doc = DelegatedCredential.model_validate_json(row["document"])
            try:
                public_key = load_public_key(doc.agent_public_key)
            except ValueError:
                public_key = None
            cache[credential_id] = _Credential(row, doc, doc.verify(issuer.public_key), credential_qr_part(doc),
                                               parse_iso(row["revoked_at"]) if row["revoked_at"] else None,
                                               public_key)
    return cache[credential_id]


def _check_delegated(batch: _Batch, issuer: Issuer, outlet: dict, invoice: dict,
                     forms: fastpath.Forms | None) -> None:
    sec = invoice["security"]
    found = _credential(batch, issuer, sec["authority_id"])
    if found is None:
        raise Rejected("unknown_credential", f"no credential {sec['authority_id']} was issued by this cloud")
    row, cred = found.row, found.doc
    if row["outlet_id"] != outlet["id"]:
        raise Rejected("foreign_credential", "the credential was issued to another outlet")
    if not found.issuer_ok:
        raise Rejected("bad_credential", "the stored credential does not verify with the issuer key")
    moment = datetime.fromisoformat(sec["timestamp"])
    if found.revoked_at is not None and moment >= found.revoked_at:
        raise Rejected("credential_revoked", f"sealed at {sec['timestamp']}, after the credential's "
                       f"revocation ({row['revoked_at']})")
    if forms is not None and found.public_key is not None:
        problems = fastpath.verify_seal(invoice, found.public_key, forms.digest)
    else:
        problems = verify_stalela_seal(invoice, cred.agent_public_key)
    if problems:
        raise Rejected("bad_signature", "; ".join(problems))
    if not sec["qr_payload"].endswith(";" + found.qr_part) or sec["qr_payload"].count(";") != 15:
        raise Rejected("bad_signature", "the QR payload does not carry this credential")
    number = sec["fiscal_number"]
    if not cred.block_start <= number <= cred.block_end:
        raise Rejected("outside_block", f"fiscal number {number} is outside the credential's block "
                       f"[{cred.block_start}, {cred.block_end}]")
    if row["closed_last_used"] is not None and number > row["closed_last_used"]:
        raise Rejected("voided_number", f"fiscal number {number} is after the block's closure "
                       f"(last used {row['closed_last_used']})")
    if not cred.valid_at(moment):
        raise Rejected("outside_window", f"sealed at {sec['timestamp']}, outside the credential's "
                       f"validity [{cred.not_before.isoformat()}, {cred.not_after.isoformat()})")


def _check_device(tx: Tx, outlet: dict, invoice: dict) -> None:
    # The MCF's security elements are recorded as they are: the cloud cannot re-derive SIG.
    mid = invoice["security"]["authority_id"]
    device = tx.device(mid)
    if device is None or device["nif"] != outlet["merchant_nif"] or device["outlet_id"] != outlet["id"]:
        raise Rejected("unregistered_device", f"device {mid} is not registered to this outlet's NIF")


def _check_chain(batch: _Batch, outlet_id: str, invoice: dict) -> None:
    key = ledger.chain_key(outlet_id, invoice)
    head = batch.head(key)
    expected = head["invoice_hash"] if head else GENESIS_HASH
    number = invoice["security"]["fiscal_number"]
    if invoice["chain"]["prev_hash"] != expected:
        where = f"after number {head['fiscal_number']}" if head else "at the start of the chain"
        raise Rejected("chain_break", f"prev_hash does not link to the last reconciled invoice of {key} "
                       f"({where}); send invoices in sealing order")
    if head is not None and number <= head["fiscal_number"]:
        raise Rejected("chain_break", f"fiscal number {number} does not follow {head['fiscal_number']}")


def _record_rejection(tx: Tx, outlet_id: str, raw: Any, exc: Rejected, now: datetime) -> None:
    sec = raw.get("security") if isinstance(raw, dict) else None
    sec = sec if isinstance(sec, dict) else {}
    number = sec.get("fiscal_number")
    number = number if type(number) is int and -2**63 <= number < 2**63 else None
    chain = raw.get("chain") if isinstance(raw, dict) and isinstance(raw.get("chain"), dict) else {}
    tx.insert_rejection(
        outlet_id, raw.get("mode") if isinstance(raw, dict) and isinstance(raw.get("mode"), str) else None,
        sec.get("authority_id") if isinstance(sec.get("authority_id"), str) else None, number,
        exc.reason, exc.detail, chain.get("hash") if isinstance(chain.get("hash"), str) else None, iso(now),
    )


def rejection_view(row: dict) -> dict:
    return {k: row[k] for k in ("id", "mode", "authority_id", "fiscal_number", "reason", "detail",
                                "invoice_hash", "received_at")}

