"""Online signing (`cloud` mode): seal an invoice request for an outlet, once per request_id."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from fiscal.canonical import request_fingerprint
from fiscal.protocol import GENESIS_HASH, chain_key
from fiscal.invoice import counters, sealed_invoice, security
from fiscal.models import InvoiceRequest, SealedInvoice
from fiscal.seal import apply_signature
from fiscal.tax import TaxError, compute

from . import credits, ledger
from .errors import Conflict, Invalid
from .issuer import Issuer
from .repository import Tx


class CreditRefused(Invalid):
    """A credit note the ledger does not allow (`credits.problem`): a 422 whose kind is the reason."""


def authority_id(outlet_id: str) -> str:
    return f"CLOUD-{outlet_id}"


def resolve_isf(outlet: dict, isf: str | None) -> str:
    registered = outlet["isf"]
    if registered and isf and isf != registered:
        raise Invalid("isf_mismatch", f"isf {isf!r} is not the one registered for outlet {outlet['id']}")
    chosen = registered or isf
    if not chosen:
        raise Invalid("isf_missing", f"outlet {outlet['id']} has no registered ISF; send `isf`")
    return chosen


def compute_totals(request: InvoiceRequest, outlet: dict, now: datetime) -> tuple[list, dict]:
    """Lines and totals by the shared tax engine, with the table in force on the outlet's date."""
    local_day = now.astimezone(ZoneInfo(outlet["time_zone"])).date()
    try:
        result = compute(request, local_day)
    except TaxError as exc:
        raise Invalid("invoice_refused", "the tax rules refuse this invoice", errors=exc.errors) from None
    return ([line.model_dump(mode="json") for line in result.lines],
            result.totals.model_dump(mode="json"))


def seal(tx: Tx, issuer: Issuer, outlet: dict, request: InvoiceRequest, *, isf: str,
         invoice_id: str | None, lines: list, totals: dict, now: datetime) -> tuple[dict, bool]:
    """(sealed invoice JSON, created). Must run in a write transaction: it takes a number."""
    fingerprint = request_fingerprint(request)
    key = chain_key("cloud", outlet_id=outlet["id"])
    # One read for all the seal needs (one statement on PostgreSQL). The number it takes is
    # given back by the rollback when the seal does not go on (a credit refused, a deadline).
    state = tx.seal_state(outlet["id"], request.request_id, key, request.type)
    done = state.done
    if done is not None:
        if done["fingerprint"] != fingerprint:
            raise Conflict("idempotency_conflict",
                           f"request_id {request.request_id} was already sealed with a different body")
        return json.loads(tx.ledger_invoice(done["ledger_id"])), False

    if request.type in credits.CREDIT_TYPES:
        found = credits.problem(tx, outlet["id"], request.type, request.reference.code, totals["total"])
        if found is not None:
            raise CreditRefused(found[0], found[1],
                                errors=[{"field": "reference.code" if found[0] != "credit_exceeds_original"
                                         else "items", "message": found[1]}])
    number = state.number
    if number is None:
        raise LookupError(f"outlet {outlet['id']} has no counter")
    head = state.head
    moment = now.astimezone(ZoneInfo(outlet["time_zone"])).replace(microsecond=0)
    if head is not None:
        previous = datetime.fromisoformat(head["sealed_at"])
        moment = max(moment, previous.astimezone(moment.tzinfo))  # never earlier than the last one
    # The counters of the cloud signer's chain, like the device's FC (per type) and TC (total).
    last_same = state.last_same
    type_count = (json.loads(last_same["invoice"])["security"]["counters"]["type"] if last_same else 0) + 1
    total_count = (json.loads(head["invoice"])["security"]["counters"]["total"] if head else 0) + 1
    invoice = sealed_invoice(
        request.model_dump(mode="json"), invoice_id=invoice_id or str(uuid.uuid4()), mode="cloud",
        merchant_nif=outlet["merchant_nif"], outlet_id=outlet["id"], isf=isf, lines=lines, totals=totals,
        security=security(authority_id=authority_id(outlet["id"]), fiscal_number=number,
                          counters=counters(type_count, total_count, request.type), timestamp=moment.isoformat()),
        prev_hash=head["invoice_hash"] if head else GENESIS_HASH)
    apply_signature(invoice, issuer.private_key, None)
    SealedInvoice.model_validate(invoice)  # the contract holds for what the cloud itself seals
    entry, code, days = ledger.sealed_entry(outlet["id"], invoice, now, state.tail)
    tx.append_sealed(entry, code, days, request.request_id, fingerprint)
    return invoice, True
