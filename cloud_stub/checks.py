"""The checks of reconciliation that need no database: pure functions of one uploaded invoice.

For each invoice: its shape (`fastpath.well_formed`, else the `SealedInvoice` model), its content
hash and the text the ledger would store (`fastpath.forms`, one encoding), and for a delegated
invoice its Ed25519 signature checked against the agent key of the credential it names. The key
comes from the caller (`keys`: credential id → agent public key, read from the database
beforehand), so nothing here reads or writes anything: these checks can run in the verifier's
worker processes (verifier.py) as well as in the service's own process, with the same result.

The result is a `Checked` record: what the sequential checks (reconcile.py) read, and no more, so
a worker's answer is small and the service never encodes an invoice again. Nothing is decided
here: a signature that does not verify is reported (`problems`), and reconcile.py decides
whether it matters, in the order of docs/cloud-api.md ("Reconciliation").
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Mapping, NamedTuple

from pydantic import ValidationError

from fiscal.runtime.problems import validation_errors
from fiscal.models import SealedInvoice
from fiscal.seal import chain_hash, verify_stalela_seal
from fiscal.signing import load_verifying_key

from . import arithmetic, fastpath, textpath
from .issuer import iso
from .ledger import stored_text


class Rejected(Exception):
    """A per-invoice refusal: `reason` is the answer's machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Checked(NamedTuple):
    """One uploaded invoice after the pure checks. Plain values only (it crosses processes)."""

    # Read from the upload as it is, whatever its shape: the answer's `id` and what a rejection
    # records (mode, authority, number, hash), each kept only when it has the expected type.
    id: str | None
    trace_mode: str | None
    trace_authority: str | None
    trace_number: int | None
    trace_hash: str | None
    # Why the shape is refused (reason `invalid`); None when the invoice is well-formed, and then
    # the fields below are the invoice's own values.
    invalid: str | None
    outlet_id: str | None = None
    merchant_nif: str | None = None
    mode: str | None = None
    type: str | None = None
    authority_id: str | None = None
    fiscal_number: int | None = None
    timestamp: str | None = None
    sealed_at: str | None = None  # the timestamp in UTC, as the ledger indexes it
    qr_payload: str | None = None
    prev_hash: str | None = None
    chain_hash: str | None = None
    content_hash: str | None = None  # what `chain_hash` must be
    stored: str | None = None  # the ledger's text of the invoice (without `sync`)
    fast: bool = False  # the shape was vouched for by fastpath (decides which seal check applies)
    # The seal's problems against `keys[authority_id]` (empty: it verifies); None when not
    # checked (not delegated, no key given, or the check failed: the caller runs it itself).
    problems: list[str] | None = None
    # What credit notes need from the ledger: the invoice's code and total, and the code of the
    # original it credits (None when it has no reference).
    code: str | None = None
    total: str | None = None
    reference_code: str | None = None
    # The tax engine's verdict on the invoice's amounts (arithmetic.py): None when they are the
    # engine's, else the rejection reason and its detail.
    arith: str | None = None
    arith_detail: str | None = None


def check(raw: Any, keys: Mapping[str, str], loaded: dict[str, Any]) -> tuple:
    """The `Checked` fields of one uploaded invoice, as a plain tuple (cheap to send).

    `loaded` caches the loaded public keys across calls (key text → key, or None if it does not load).
    """
    trace = _trace(raw)
    try:
        invoice, content_hash, forms = check_shape(raw)
    except Rejected as exc:
        return (*trace, exc.detail)
    sec, chain, mode = invoice["security"], invoice["chain"], invoice["mode"]
    problems = None
    if mode == "delegated":
        key = keys.get(sec["authority_id"])
        if key is not None:
            try:
                problems = seal_problems(invoice, forms, key, loaded)
            except Exception:  # e.g. a key that does not load: the caller meets the error itself
                problems = None
    stored = forms.stored if forms is not None else stored_text(invoice)
    moment = datetime.fromisoformat(sec["timestamp"])
    return (*trace, None, invoice["outlet_id"], invoice["merchant_nif"], mode, invoice["type"],
            sec["authority_id"], sec["fiscal_number"], sec["timestamp"],
            iso(moment), sec["qr_payload"], chain["prev_hash"],
            chain["hash"], content_hash, stored, forms is not None, problems,
            *credit_fields(invoice), *arithmetic_verdict(invoice, moment))


def credit_fields(invoice: dict) -> tuple[str, str, str | None]:
    """(code, total, reference code) of a well-formed invoice."""
    ref = invoice.get("reference")
    return (invoice["security"]["code"], invoice["totals"]["total"],
            ref["code"] if isinstance(ref, dict) else None)


def arithmetic_verdict(invoice: dict, moment: datetime) -> tuple[str | None, str | None]:
    """(reason, detail) of the tax engine's disagreement with the invoice, or (None, None)."""
    try:
        found = arithmetic.problem(arithmetic.request_of(invoice), moment.date(), invoice["lines"],
                                   invoice["totals"])
    except Exception as exc:  # never seen; still an answer for this invoice, never a failed batch
        found = ("invoice_refused", f"the amounts cannot be recomputed: {type(exc).__name__}")
    return found if found is not None else (None, None)


def check_text(payload: bytes, keys: Mapping[str, str], loaded: dict[str, Any]) -> list[tuple] | None:
    """`check` for each invoice of a JSON array (UTF-8 bytes); None if it is not one.

    Element by element: an invoice the text fast path recognises (textpath.py) is checked from
    its text; any other element is parsed by json's own scanner and checked as a value. The
    array around them is read by JSON's rules, so None comes exactly when `json.loads` would
    fail or give something else than a list.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    pos = _skip(text, 0).end()
    if not text.startswith("[", pos):
        return None
    pos = _skip(text, pos + 1).end()
    records: list[tuple] = []
    if not text.startswith("]", pos):
        while True:
            match = textpath.INVOICE.match(text, pos)
            record = textpath.check(match, keys, loaded) if match is not None else None
            if record is not None:
                pos = match.end()
            else:
                try:
                    raw, pos = _element(text, pos)
                except (ValueError, RecursionError):  # as json.loads: not JSON (or too deep)
                    return None
                record = check(raw, keys, loaded)
            records.append(record)
            pos = _skip(text, pos).end()
            if text.startswith(",", pos):
                pos = _skip(text, pos + 1).end()
            elif text.startswith("]", pos):
                break
            else:
                return None
    return records if _skip(text, pos + 1).end() == len(text) else None


_skip = re.compile(r"[ \t\n\r]*").match  # JSON's whitespace
_element = json.JSONDecoder().raw_decode  # the scanner json.loads uses, for one value


def seal_problems(invoice: dict, forms: fastpath.Forms | None, agent_public_key: str,
                  loaded: dict[str, Any] | None = None) -> list[str]:
    """The delegated seal's problems (empty: valid), by the fast check when the shape allows it.

    Raises what `verify_stalela_seal` raises for a key that does not load.
    """
    if forms is not None:
        cache = loaded if loaded is not None else {}
        if agent_public_key not in cache:
            if len(cache) >= 4096:  # keys of credentials long gone: forget them all
                cache.clear()
            try:
                cache[agent_public_key] = load_verifying_key(agent_public_key)
            except ValueError:
                cache[agent_public_key] = None
        public_key = cache[agent_public_key]
        if public_key is not None:
            return fastpath.verify_seal(invoice, public_key, forms.digest)
    return verify_stalela_seal(invoice, agent_public_key)


def stored_seal_problems(record: Checked, agent_public_key: str) -> list[str]:
    """`seal_problems` of a well-formed record, from its stored text (when no worker checked it)."""
    invoice = json.loads(record.stored)
    return seal_problems(invoice, fastpath.forms(invoice) if record.fast else None, agent_public_key)


def _trace(raw: Any) -> tuple:
    if not isinstance(raw, dict):
        return None, None, None, None, None
    ident = raw.get("id")
    sec = raw.get("security")
    sec = sec if isinstance(sec, dict) else {}
    number = sec.get("fiscal_number")
    chain = raw.get("chain")
    chain = chain if isinstance(chain, dict) else {}
    mode, authority, chain_hash_ = raw.get("mode"), sec.get("authority_id"), chain.get("hash")
    return (ident if isinstance(ident, str) else None,
            mode if isinstance(mode, str) else None,
            authority if isinstance(authority, str) else None,
            number if type(number) is int and -2**63 <= number < 2**63 else None,
            chain_hash_ if isinstance(chain_hash_, str) else None)


# -- shape ---------------------------------------------------------------------------------


def check_shape(raw: Any) -> tuple[dict, str, fastpath.Forms | None]:
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


# -- warm-up ---------------------------------------------------------------------------------


def warm_up() -> None:
    """Run every path once (model, fast shape, encodings, a signature check) so the first real
    batch does not pay for lazy imports, compiled validators and the crypto backend's setup."""
    from fiscal.signing import generate_private_key, public_key_text

    key = public_key_text(generate_private_key())
    sample = {"id": "WARM", "mode": "delegated", "security": {"authority_id": "DC-WARM", "fiscal_number": 1},
              "chain": {"hash": "0" * 64}}
    loaded: dict[str, Any] = {}
    for raw in ("not an invoice", sample):
        check(raw, {"DC-WARM": key}, loaded)
    invoice = {"merchant_nif": "N", "totals": {"total": "1.00", "vat": "0.00"}, "chain": {"prev_hash": "0" * 64},
               "security": {"authority_id": "DC-WARM", "fiscal_number": 1, "timestamp": "2026-01-01T00:00:00+01:00",
                            "signature": "AA", "code": "", "qr_payload": ""}}
    fastpath.verify_seal(invoice, load_verifying_key(key), b"\0" * 32)
    fastpath.forms(invoice)
    # The tax engine (its table, the request model's validators) and both verdict paths.
    request = {"request_id": "WARM", "type": "FV", "invoice_number": "W", "pos_terminal_id": "W",
               "operator": {"id": "1", "name": "W"}, "items": [{"name": "W", "type": "BIE", "tax_group": "B",
                                                                "unit_price": "1.00"}], "payments": []}
    arithmetic.problem(request, datetime.now().date(), [], {})
    arithmetic.adds_up_plain("FV", "TTC", [("1", "B", "BIE", "1.00")], [], False, datetime.now().date(), "[]", "{}")
