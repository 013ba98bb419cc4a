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

from . import ledger
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
        return {k: v for k, v in self.__dict__.items() if v is not None}


def reconcile_batch(tx: Tx, issuer: Issuer, outlet: dict, invoices: list[Any], now: datetime) -> list[Outcome]:
    credentials: dict[str, _Credential | None] = {}
    outcomes = []
    for index, raw in enumerate(invoices):
        outcome = Outcome(index, "rejected")
        if isinstance(raw, dict):
            outcome.id = raw.get("id") if isinstance(raw.get("id"), str) else None
        try:
            invoice, content_hash = _check_shape(raw)
            sec = invoice["security"]
            outcome.fiscal_number, outcome.authority_id = sec["fiscal_number"], sec["authority_id"]
            outcome.status, outcome.ledger_seq = _reconcile_one(tx, issuer, outlet, invoice, content_hash,
                                                                credentials, now)
        except Rejected as exc:
            outcome.status, outcome.reason, outcome.detail = "rejected", exc.reason, exc.detail
            _record_rejection(tx, outlet["id"], raw, exc, now)
        outcomes.append(outcome)
    return outcomes


def _check_shape(raw: Any) -> tuple[dict, str]:
    """The invoice as it will be stored, and the hash of its content."""
    if not isinstance(raw, dict):
        raise Rejected("invalid", "an invoice must be a JSON object")
    try:
        SealedInvoice.model_validate(raw)
    except ValidationError as exc:
        first = validation_errors(exc)[0]
        raise Rejected("invalid", f"{first['field']}: {first['message']}") from None
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
    invoice = {k: v for k, v in raw.items() if k != "sync"}
    try:
        return invoice, chain_hash(invoice)
    except ValueError as exc:  # e.g. an integer beyond RFC 8785's range
        raise Rejected("invalid", f"the invoice cannot be canonicalized: {exc}") from None


def _reconcile_one(tx: Tx, issuer: Issuer, outlet: dict, invoice: dict, content_hash: str,
                   credentials: dict, now: datetime) -> tuple[str, int | None]:
    if invoice["outlet_id"] != outlet["id"]:
        raise Rejected("wrong_outlet", "the invoice names another outlet than the caller's")
    if invoice["merchant_nif"] != outlet["merchant_nif"]:
        raise Rejected("wrong_merchant", "the invoice names another NIF than the outlet's merchant")
    if invoice["chain"]["hash"] != content_hash:
        raise Rejected("hash_mismatch", "chain.hash does not match the invoice content")

    mode = invoice["mode"]
    existing = tx.by_number_key(ledger.number_key(outlet["id"], invoice))
    if existing is not None:
        if existing["outlet_id"] != outlet["id"]:  # a device number: only its own outlet may know it
            _check_device(tx, outlet, invoice)
        if existing["invoice_hash"] == invoice["chain"]["hash"]:
            return "duplicate", None
        raise Rejected("conflict", "this fiscal number is already in the ledger with different content")

    if mode == "delegated":
        _check_delegated(tx, issuer, outlet, invoice, credentials)
    elif mode == "device":
        _check_device(tx, outlet, invoice)
    else:  # cloud: every invoice the cloud sealed is already in the ledger (found above)
        if invoice["security"]["authority_id"] != cloud_authority(outlet["id"]):
            raise Rejected("not_sealed_by_cloud", "the authority is not this outlet's cloud signer")
        raise Rejected("not_sealed_by_cloud", "the cloud never sealed an invoice with this number")

    _check_chain(tx, outlet["id"], invoice)
    _, seq = ledger.append(tx, outlet["id"], invoice, now)
    if mode == "device":
        tx.touch_device(invoice["security"]["authority_id"], iso(now))
    return "accepted", seq


@dataclass(frozen=True)
class _Credential:
    """A credential row with what every invoice of a batch needs from it, computed once."""

    row: dict
    doc: DelegatedCredential
    issuer_ok: bool
    qr_part: str


def _credential(tx: Tx, issuer: Issuer, cache: dict, credential_id: str) -> _Credential | None:
    if credential_id not in cache:
        row = tx.credential(credential_id)
        if row is None:
            cache[credential_id] = None
        else:
            doc = DelegatedCredential.model_validate_json(row["document"])
            cache[credential_id] = _Credential(row, doc, doc.verify(issuer.public_key), credential_qr_part(doc))
    return cache[credential_id]


def _check_delegated(tx: Tx, issuer: Issuer, outlet: dict, invoice: dict, credentials: dict) -> None:
    sec = invoice["security"]
    found = _credential(tx, issuer, credentials, sec["authority_id"])
    if found is None:
        raise Rejected("unknown_credential", f"no credential {sec['authority_id']} was issued by this cloud")
    row, cred = found.row, found.doc
    if row["outlet_id"] != outlet["id"]:
        raise Rejected("foreign_credential", "the credential was issued to another outlet")
    if not found.issuer_ok:
        raise Rejected("bad_credential", "the stored credential does not verify with the issuer key")
    moment = datetime.fromisoformat(sec["timestamp"])
    if row["revoked_at"] and moment >= parse_iso(row["revoked_at"]):
        raise Rejected("credential_revoked", f"sealed at {sec['timestamp']}, after the credential's "
                       f"revocation ({row['revoked_at']})")
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


def _check_chain(tx: Tx, outlet_id: str, invoice: dict) -> None:
    key = ledger.chain_key(outlet_id, invoice)
    head = tx.chain_head(key)
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

