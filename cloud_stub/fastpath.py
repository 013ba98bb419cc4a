"""The fast path of reconciliation for well-formed invoices: a structural check and one encoding.

`well_formed(raw)` is a *sufficient* condition: True only when `SealedInvoice.model_validate(raw)`
would succeed **and** the data is plain JSON (strings, nulls, safe integers, ASCII keys, no
floats), so RFC 8785 output is what `canonical_trusted` writes. It is stricter than the model on
purpose (ASCII digits only, exact types, no trailing newline, `usd_rate` must be null); anything
it does not vouch for goes through the model and `canonical_bytes` as before, so every rejection
keeps its reason and message.

`forms(invoice)` then encodes the bulky parts of a well-formed invoice once and assembles from
them the three forms reconciliation needs: the chain view (its SHA-256 is `chain.hash`), the
unsigned view (its SHA-256 is the digest inside the signed message) and the stored text (the
invoice itself, canonical). Byte for byte what `chain_hash(invoice)`, `record_digest(invoice)`
and `canonical_bytes(invoice)` give (the latter being RFC 8785 for plain JSON).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fiscal.canonical import canonical_text
from fiscal.seal import qr_time
from fiscal.protocol import STALELA_QR_TAG
from fiscal.signing import auth_code, b32, unb64url, verify

# The encoder of `fiscal.canonical.canonical_trusted`, returning text (joined, then encoded once).
_enc = canonical_text
_SAFE = 2**53 - 1
_CTRL = re.compile("[\x00-\x1f\x7f]").search
_MONEY = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,2})?").fullmatch
_POS_MONEY = re.compile(r"(?=[0-9.]*[1-9])[0-9]{1,15}(?:\.[0-9]{1,2})?").fullmatch
_POS_QTY = re.compile(r"(?=[0-9.]*[1-9])[0-9]{1,9}(?:\.[0-9]{1,3})?").fullmatch
_RATE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,4})?").fullmatch
_REF_CODE = re.compile(r"[A-Z0-9]{24}").fullmatch

_TOP_REQUIRED = frozenset({"id", "request_id", "mode", "type", "price_mode", "invoice_number", "merchant_nif",
                           "outlet_id", "isf", "pos_terminal_id", "operator", "items", "lines", "totals",
                           "security", "chain"})
_TOP_ALL = _TOP_REQUIRED | {"status", "client", "comments", "reference", "usd_rate", "sync"}
_TOP_STR = ("id", "request_id", "invoice_number", "merchant_nif", "outlet_id", "isf", "pos_terminal_id")
_MODES = frozenset({"device", "cloud", "delegated"})
_TYPES = frozenset({"FV", "FT", "EV", "ET", "FA", "EA"})
_PRICE_MODES = frozenset({"TTC", "HT"})
_CLIENT_TYPES = frozenset({"PP", "PM", "PC", "PL", "AO"})
_CLIENT_TEXT = {"nif": 32, "name": 128, "address": 128, "phone": 32, "email": 128, "rccm": 64}
_CLIENT_KEYS = frozenset(_CLIENT_TEXT) | {"type"}
_ITEM_TYPES = frozenset({"BIE", "SER", "TAX"})
_TAX_GROUPS = frozenset("ABCDEFGHIJKLMNOP")
_COMMENT_LINES = frozenset("ABCDEFGH")
_PAYMENT_METHODS = frozenset({"E", "V", "C", "M", "D", "A"})
_ITEM_REQUIRED = frozenset({"name", "type", "tax_group", "unit_price"})
_ITEM_KEYS = _ITEM_REQUIRED | {"code", "quantity", "specific_tax", "original_price", "price_change"}
_SPECIFIC_KEYS = frozenset({"per_unit", "percent", "description"})
_AMOUNTS = frozenset({"total", "ht", "vat", "specific_tax"})
_GROUP = frozenset({"rate", "total", "ht", "vat"})
_TOTALS_REQUIRED = frozenset({"total", "vat", "specific_tax", "by_group", "payments", "paid", "change"})
_TOTALS_KEYS = _TOTALS_REQUIRED | {"usd_equivalent"}
_PAYMENT = frozenset({"method", "amount"})
_SEC_REQUIRED = frozenset({"authority_id", "code", "counters", "fiscal_number", "timestamp", "qr_payload"})
_SEC_KEYS = _SEC_REQUIRED | {"signature"}
_SEC_STR = ("authority_id", "code", "timestamp", "qr_payload")
_COUNTERS = frozenset({"type", "total", "label"})
_CHAIN = frozenset({"prev_hash", "hash"})
_REFERENCE = frozenset({"nature", "code"})
_NATURES = frozenset({"COR", "RAN", "RAM", "RRR"})
_SYNC_KEYS = frozenset({"state", "reason"})
_SYNC_STATES = frozenset({"pending", "accepted", "duplicate", "rejected", "quarantined"})
_UNSIGNED_DROP = ("code", "qr_payload", "signature")


def _text(v: Any, hi: int) -> bool:
    return type(v) is str and 1 <= len(v) <= hi and _CTRL(v) is None


def _opt_text(v: Any, hi: int) -> bool:
    return v is None or (type(v) is str and 1 <= len(v) <= hi and _CTRL(v) is None)


def _money(v: Any) -> bool:
    return type(v) is str and _MONEY(v) is not None


def _safe_int(v: Any) -> bool:
    return type(v) is int and -_SAFE <= v <= _SAFE


def _keys(d: Any, allowed: frozenset, required: frozenset) -> bool:
    return type(d) is dict and d.keys() <= allowed and required <= d.keys()


def _item(it: Any) -> bool:
    if not _keys(it, _ITEM_KEYS, _ITEM_REQUIRED):
        return False
    g = it.get
    if not (_text(it["name"], 64) and _opt_text(g("code"), 24) and type(it["type"]) is str
            and it["type"] in _ITEM_TYPES and type(it["tax_group"]) is str and it["tax_group"] in _TAX_GROUPS):
        return False
    price = it["unit_price"]
    if type(price) is not str or _POS_MONEY(price) is None:
        return False
    if "quantity" in it:
        qty = it["quantity"]
        if type(qty) is not str or _POS_QTY(qty) is None:
            return False
    spec = g("specific_tax")
    if spec is not None:
        if not _keys(spec, _SPECIFIC_KEYS, frozenset()):
            return False
        per_unit, percent = spec.get("per_unit"), spec.get("percent")
        if (per_unit is None) == (percent is None) or not _opt_text(spec.get("description"), 16):
            return False
        if per_unit is not None and (type(per_unit) is not str or _POS_MONEY(per_unit) is None):
            return False
        if percent is not None and (type(percent) is not str or _RATE(percent) is None
                                    or not 0 < Decimal(percent) <= 100):
            return False
    original, change = g("original_price"), g("price_change")
    if (original is None) != (change is None):
        return False
    if original is not None and (type(original) is not str or _POS_MONEY(original) is None
                                 or not _text(change, 24)):
        return False
    return True


def _totals(t: Any) -> bool:
    if not _keys(t, _TOTALS_KEYS, _TOTALS_REQUIRED):
        return False
    if not (_money(t["total"]) and _money(t["vat"]) and _money(t["specific_tax"]) and _money(t["paid"])
            and _money(t["change"])):
        return False
    usd = t.get("usd_equivalent")
    if usd is not None and not _money(usd):
        return False
    groups = t["by_group"]
    if type(groups) is not dict:
        return False
    for key, g in groups.items():
        if key not in _TAX_GROUPS or type(g) is not dict or g.keys() != _GROUP:
            return False
        for value in g.values():  # every member is an amount
            if type(value) is not str or _MONEY(value) is None:
                return False
    payments = t["payments"]
    if type(payments) is not list:
        return False
    for p in payments:
        if type(p) is not dict or p.keys() != _PAYMENT:
            return False
        if type(p["method"]) is not str or p["method"] not in _PAYMENT_METHODS or not _money(p["amount"]):
            return False
    return True


def _security(s: Any) -> bool:
    if not _keys(s, _SEC_KEYS, _SEC_REQUIRED):
        return False
    for key in _SEC_STR:
        if type(s[key]) is not str:
            return False
    sig = s.get("signature")
    if sig is not None and type(sig) is not str:
        return False
    c = s["counters"]
    if type(c) is not dict or c.keys() != _COUNTERS:
        return False
    return _safe_int(c["type"]) and _safe_int(c["total"]) and type(c["label"]) is str \
        and _safe_int(s["fiscal_number"])


def well_formed(raw: Any) -> bool:
    """True only if the model accepts `raw` and it is plain JSON; False means "ask the model"."""
    try:
        return _well_formed(raw)
    except Exception:  # anything unexpected (unhashable values...): the model decides
        return False


def _well_formed(raw: Any) -> bool:
    if not _keys(raw, _TOP_ALL, _TOP_REQUIRED):
        return False
    for key in _TOP_STR:
        if type(raw[key]) is not str:
            return False
    g = raw.get
    mode, typ, price_mode = raw["mode"], raw["type"], raw["price_mode"]
    if not (type(mode) is str and mode in _MODES and type(typ) is str and typ in _TYPES
            and type(price_mode) is str and price_mode in _PRICE_MODES):
        return False
    status = g("status", "sealed")
    if type(status) is not str or status != "sealed":
        return False
    op = raw["operator"]
    if type(op) is not dict or op.keys() != {"id", "name"} or not (_text(op["id"], 16) and _text(op["name"], 32)):
        return False
    client = g("client")
    if client is not None:
        if not _keys(client, _CLIENT_KEYS, frozenset()):
            return False
        if "type" in client and (type(client["type"]) is not str or client["type"] not in _CLIENT_TYPES):
            return False
        for key, hi in _CLIENT_TEXT.items():
            if not _opt_text(client.get(key), hi):
                return False
    items = raw["items"]
    if type(items) is not list:
        return False
    for it in items:
        if not _item(it):
            return False
    lines = raw["lines"]
    if type(lines) is not list:
        return False
    for line in lines:
        if type(line) is not dict or line.keys() != _AMOUNTS:
            return False
        for value in line.values():  # every member is an amount
            if type(value) is not str or _MONEY(value) is None:
                return False
    if "comments" in raw:
        comments = raw["comments"]
        if type(comments) is not dict:
            return False
        for key, value in comments.items():
            if key not in _COMMENT_LINES or type(value) is not str:
                return False
    ref = g("reference")
    if ref is not None:
        if type(ref) is not dict or ref.keys() != _REFERENCE:
            return False
        if type(ref["nature"]) is not str or ref["nature"] not in _NATURES:
            return False
        if type(ref["code"]) is not str or _REF_CODE(ref["code"]) is None:
            return False
    if g("usd_rate") is not None:  # a date to parse: the model's job
        return False
    if not _totals(raw["totals"]) or not _security(raw["security"]):
        return False
    chain = raw["chain"]
    if type(chain) is not dict or chain.keys() != _CHAIN or type(chain["prev_hash"]) is not str \
            or type(chain["hash"]) is not str:
        return False
    if "sync" in raw:
        sync = raw["sync"]
        if not _keys(sync, _SYNC_KEYS, frozenset()):
            return False
        state = sync.get("state", "pending")
        if type(state) is not str or state not in _SYNC_STATES:
            return False
        reason = sync.get("reason")
        if reason is not None and type(reason) is not str:
            return False
    return True


@dataclass(frozen=True)
class Forms:
    content_hash: str  # SHA-256 hex of the chain view: what `chain.hash` must be
    digest: bytes  # SHA-256 of the unsigned view: the DIGEST of the signed message
    stored: str  # the invoice (without `sync`), canonical: what the ledger stores


def forms(invoice: dict[str, Any]) -> Forms:
    """The three forms of a well-formed invoice (already without `sync`), from one encoding.

    Keys sort the same in every form, so the members before `chain`, between `chain` and
    `security`, and after `security` are each encoded once (as objects, braces dropped) and the
    forms differ only in the `chain` and `security` members spliced between them.
    """
    enc = _enc
    before: dict[str, Any] = {}
    middle: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key, value in invoice.items():
        if key < "chain":
            before[key] = value
        elif key < "security":
            if key != "chain":
                middle[key] = value
        elif key != "security":
            after[key] = value
    chain, sec = invoice["chain"], invoice["security"]
    b, m, a = (enc(d)[1:-1] if d else "" for d in (before, middle, after))
    prev_only = '"chain":{"prev_hash":' + enc(chain["prev_hash"]) + "}"
    chain_full = '"chain":' + enc(chain)
    sec_full = '"security":' + enc(sec)
    sec_unsigned = '"security":' + enc({k: v for k, v in sec.items() if k not in _UNSIGNED_DROP})

    def assemble(chain_part: str, sec_part: str) -> str:
        return "{" + ",".join(p for p in (b, chain_part, m, sec_part, a) if p) + "}"

    return Forms(
        content_hash=hashlib.sha256(assemble(prev_only, sec_full).encode("utf-8")).hexdigest(),
        digest=hashlib.sha256(assemble(prev_only, sec_unsigned).encode("utf-8")).digest(),
        stored=assemble(chain_full, sec_full),
    )


def verify_seal(invoice: dict[str, Any], public_key: Any, digest: bytes) -> list[str]:
    """`verify_stalela_seal` for a well-formed invoice whose chain hash reconciliation checks.

    The same checks and messages, with the record digest from the invoice's single encoding
    (`forms`) and the signer's key already loaded; the message is `seal_message`'s.
    """
    problems: list[str] = []
    sec = invoice["security"]
    try:
        signature = unb64url(sec.get("signature") or "")
    except ValueError:
        return ["signature is not base64url"]
    totals = invoice["totals"]
    message = ";".join([
        STALELA_QR_TAG, sec["authority_id"], invoice["merchant_nif"], qr_time(sec["timestamp"]),
        str(sec["fiscal_number"]), totals["total"], totals["vat"], b32(digest),
    ])
    if not verify(public_key, signature, message.encode("ascii")):
        problems.append("signature does not match the invoice content")
    if sec.get("code") != auth_code(signature):
        problems.append("authentication code does not derive from the signature")
    if not str(sec.get("qr_payload", "")).startswith(f"{message};{b32(signature)}"):
        problems.append("QR payload does not match the sealed content")
    return problems
