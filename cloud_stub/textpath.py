"""The text fast path: an agent's invoice recognised in its JSON text, neither parsed nor encoded.

An agent uploads each invoice as it stored it: every member present, in sorted order (its
canonical text; journals written before: the model's order), and every member's value already canonical (keys sorted, no whitespace, strings without escapes).
For such a text, the three forms reconciliation needs (`fastpath.forms`: the chain view, the
unsigned view, the stored text) are the member texts put in sorted key order; the parse, the
structural walk and the encoding (≈ 140 µs of the ≈ 300 µs an invoice costs before its
signature check) are then one regular expression match (≈ 20 µs).

`check(match, ...)` is exact or it declines. `INVOICE` matches only texts that are (1) one JSON
object whose value `json.loads` gives, (2) accepted by `fastpath.well_formed` (every rule below
is that function's rule or a stricter one), and (3) canonical member by member: a fixed key order
that is the sorted one in every nested object, strings without any escape or control character
(their JSON text is then their canonical text), integers in canonical form (no `-0`, no leading
zero, at most 15 digits: safe integers), no floats, no booleans. What the expression cannot say
is checked after the match: the tax groups' keys strictly increasing (sorted, no duplicate) and
`_check_fields`' rules. Anything else, any doubt, and the caller takes the general path
(`checks.check` on the parsed value), which gives the answer reconciliation always gave. Only
delegated invoices are recognised (the bulk of a backlog); the others take the general path.
"""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Mapping

from fiscal.signing import load_verifying_key

from . import arithmetic, fastpath
from .issuer import iso


# Every repetition below is possessive (`{m,n}+`, `*+`): once it has matched, the engine keeps
# no point to come back to. That changes no match: each repetition is followed by a character it
# can never match itself (a string's characters by its closing `"`, digits by `.` `"` `,` `}`,
# a list's `,element` by `]`), so giving back any part of it could never let the rest match. It
# saves the backtracking bookkeeping per character and per element: the match of a ten-item
# invoice costs ≈ 20 µs instead of ≈ 30 µs. (Not the lookaheads: `[0-9.]*[1-9]` needs to backtrack.)


def _str(lo: int = 0, hi: int | None = None, ctrl_del: bool = False) -> str:
    """A JSON string with no escape: its text is its canonical text. `ctrl_del` also refuses
    DEL, as fastpath's `_text` does for the bounded text fields."""
    chars = r'[^"\\\x00-\x1f\x7f]' if ctrl_del else r'[^"\\\x00-\x1f]'
    return f'"{chars}{{{lo},{"" if hi is None else hi}}}+"'


def _text(hi: int) -> str:  # fastpath._text: 1..hi characters, no control character
    return _str(1, hi, ctrl_del=True)


def _opt_text(hi: int) -> str:  # fastpath._opt_text
    return f"(?:null|{_text(hi)})"


_ANY = _str()
_MONEY = r'"-?[0-9]{1,15}+(?:\.[0-9]{1,2}+)?"'  # fastpath._MONEY
_POS_MONEY = r'"(?=[0-9.]*[1-9])[0-9]{1,15}+(?:\.[0-9]{1,2}+)?"'  # fastpath._POS_MONEY
_POS_QTY = r'"(?=[0-9.]*[1-9])[0-9]{1,9}+(?:\.[0-9]{1,3}+)?"'  # fastpath._POS_QTY
_SAFE_INT = r"(?:0|-?[1-9][0-9]{0,14}+)"  # canonical, |n| < 10**15 < 2**53
_POS_INT = r"[1-9][0-9]{0,14}+"

# Items with no specific tax and no price change, which is what tills send nearly always.
_ITEM = (r'\{"code":' + _opt_text(24) + r',"name":' + _text(64) + r',"original_price":null,"price_change":null,'
         r'"quantity":' + _POS_QTY + r',"specific_tax":null,"tax_group":"[A-P]","type":"(?:BIE|SER|TAX)",'
         r'"unit_price":' + _POS_MONEY + r'\}')
_LINE = r'\{"ht":' + _MONEY + r',"specific_tax":' + _MONEY + r',"total":' + _MONEY + r',"vat":' + _MONEY + r'\}'
_GROUP = r'\{"ht":' + _MONEY + r',"rate":' + _MONEY + r',"total":' + _MONEY + r',"vat":' + _MONEY + r'\}'
_PAYMENT = r'\{"amount":' + _MONEY + r',"method":"[EVCMDA]"\}'
_CLIENT = (r'(?:null|\{"address":' + _opt_text(128) + r',"email":' + _opt_text(128) + r',"name":' + _opt_text(128)
           + r',"nif":' + _opt_text(32) + r',"phone":' + _opt_text(32) + r',"rccm":' + _opt_text(64)
           + r',"type":"(?:PP|PM|PC|PL|AO)"\})')
_REFERENCE = r'(?:null|\{"code":"[A-Z0-9]{24}","nature":"(?:COR|RAN|RAM|RRR)"\})'


def _list(element: str) -> str:
    return rf"\[(?:{element}(?:,{element})*+)?\]"


def _member(key: str, value: str) -> str:
    return f'"{key}":(?P<{key}>{value})'


# The members in the model's order: how agents stored (and upload) invoices before they kept
# the canonical text; since then, the same members in sorted order (see _EitherOrder).
_MEMBERS = [
    ("id", _ANY), ("request_id", _ANY), ("status", '"sealed"'),
    ("mode", '"delegated"'), ("type", '"(?:FV|FT|EV|ET|FA|EA)"'),
    ("price_mode", '"(?:TTC|HT)"'), ("invoice_number", _ANY), ("merchant_nif", _ANY),
    ("outlet_id", _ANY), ("isf", _ANY), ("pos_terminal_id", _ANY),
    ("operator", r'\{"id":' + _text(16) + r',"name":' + _text(32) + r'\}'),
    ("client", _CLIENT), ("items", _list(_ITEM)), ("lines", _list(_LINE)),
    ("comments", r"\{\}"), ("reference", _REFERENCE), ("usd_rate", "null"),
    ("totals", r'\{"by_group":(?P<by_group>\{(?:"[A-P]":' + _GROUP + r'(?:,"[A-P]":' + _GROUP + r')*+)?\}),'
            r'"change":' + _MONEY + r',"paid":' + _MONEY + r',"payments":' + _list(_PAYMENT)
            + r',"specific_tax":' + _MONEY + r',"total":(?P<total>' + _MONEY + r'),"usd_equivalent":(?:null|'
            + _MONEY + r'),"vat":(?P<vat>' + _MONEY + r')\}'),
    ("security", r'\{"authority_id":(?P<authority_id>' + _ANY + r'),"code":(?P<code>' + _ANY + r'),'
            r'"counters":(?P<counters>\{"label":' + _ANY + r',"total":' + _SAFE_INT + r',"type":' + _SAFE_INT
            + r'\}),"fiscal_number":(?P<fiscal_number>' + _POS_INT + r'),"qr_payload":(?P<qr_payload>' + _ANY
            + r'),"signature":(?P<signature>' + _ANY + r'),"timestamp":(?P<timestamp>' + _ANY + r')\}'),
    ("chain", r'\{"hash":(?P<hash>' + _str(1) + r'),"prev_hash":(?P<prev_hash>' + _ANY + r')\}'),
]


class _EitherOrder:
    """`re.Pattern`'s match and fullmatch over the two top-level orders an agent's text comes in:
    sorted (its canonical text, what agents store now) or the model's (journals written before).
    The groups are the same, and the forms are assembled in sorted order from them either way."""

    def __init__(self, members: list[tuple[str, str]]) -> None:
        self._patterns = tuple(re.compile(r"\{" + ",".join(_member(k, v) for k, v in order) + r"\}")
                               for order in (sorted(members), members))
        self.groupindex = self._patterns[1].groupindex

    def match(self, text: str, pos: int = 0) -> re.Match | None:
        for pattern in self._patterns:  # a text of the other order fails at its first member
            found = pattern.match(text, pos)
            if found is not None:
                return found
        return None

    def fullmatch(self, text: str, pos: int = 0) -> re.Match | None:
        for pattern in self._patterns:
            found = pattern.fullmatch(text, pos)
            if found is not None:
                return found
        return None


INVOICE = _EitherOrder(_MEMBERS)


# The members in canonical (sorted) order; `chain` and `security` change between the forms.
_SORTED = sorted(INVOICE.groupindex.keys() & {
    "id", "request_id", "status", "mode", "type", "price_mode", "invoice_number", "merchant_nif", "outlet_id",
    "isf", "pos_terminal_id", "operator", "client", "items", "lines", "comments", "reference", "usd_rate",
    "totals", "security", "chain"})
_BEFORE_CHAIN = [k for k in _SORTED if k < "chain"]
_BETWEEN = [k for k in _SORTED if "chain" < k < "security"]
_AFTER_SECURITY = [k for k in _SORTED if k > "security"]
_GROUP_KEY = re.compile(r'"([A-P])":\{').findall


def _join(match: re.Match, keys: list[str]) -> str:
    return ",".join(f'"{k}":{match.group(k)}' for k in keys)


def check(match: re.Match, keys: Mapping[str, str], loaded: dict[str, Any]) -> tuple | None:
    """The `checks.check` tuple of the invoice `match` recognised, or None to decline."""
    groups = _GROUP_KEY(match.group("by_group"))
    if any(a >= b for a, b in zip(groups, groups[1:])):  # not sorted, or a key twice
        return None
    text = match.group  # a string's value is its text without the quotes (no escapes)
    timestamp = text("timestamp")[1:-1]
    try:
        moment = datetime.fromisoformat(timestamp)  # checks._check_fields
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    before, between, after = _join(match, _BEFORE_CHAIN), _join(match, _BETWEEN), _join(match, _AFTER_SECURITY)
    prev_only = '"chain":{"prev_hash":' + text("prev_hash") + "}"
    sec_unsigned = ('"security":{"authority_id":' + text("authority_id") + ',"counters":' + text("counters")
                    + ',"fiscal_number":' + text("fiscal_number") + ',"timestamp":' + text("timestamp") + "}")

    def assemble(chain_part: str, sec_part: str) -> str:
        return "{" + ",".join(p for p in (before, chain_part, between, sec_part, after) if p) + "}"

    forms = fastpath.Forms(
        content_hash=hashlib.sha256(assemble(prev_only, '"security":' + text("security")).encode("utf-8")).hexdigest(),
        digest=hashlib.sha256(assemble(prev_only, sec_unsigned).encode("utf-8")).digest(),
        stored=assemble('"chain":' + text("chain"), '"security":' + text("security")),
    )
    ident, nif, outlet_id = text("id")[1:-1], text("merchant_nif")[1:-1], text("outlet_id")[1:-1]
    authority, number, chain_hash = text("authority_id")[1:-1], int(text("fiscal_number")), text("hash")[1:-1]
    qr_payload = text("qr_payload")[1:-1]
    problems = None
    key = keys.get(authority)
    if key is not None:
        if key not in loaded:
            if len(loaded) >= 4096:
                loaded.clear()
            try:
                loaded[key] = load_verifying_key(key)
            except ValueError:
                loaded[key] = None
        if loaded[key] is not None:  # else the caller checks it the general way, from `stored`
            invoice = {"merchant_nif": nif, "totals": {"total": text("total")[1:-1], "vat": text("vat")[1:-1]},
                       "security": {"authority_id": authority, "code": text("code")[1:-1],
                                    "fiscal_number": number, "qr_payload": qr_payload,
                                    "signature": text("signature")[1:-1], "timestamp": timestamp}}
            try:
                problems = fastpath.verify_seal(invoice, loaded[key], forms.digest)
            except Exception:  # as checks.check: the caller runs it again and meets the error itself
                problems = None
    reference = text("reference")  # null, or {"code":"<24 characters>","nature":...}
    total = text("total")[1:-1]
    return (ident, "delegated", authority, number, chain_hash, None, outlet_id, nif, "delegated",
            text("type")[1:-1], authority, number, timestamp, iso(moment), qr_payload,
            text("prev_hash")[1:-1], chain_hash, forms.content_hash, forms.stored, True, problems,
            text("code")[1:-1], total, None if reference == "null" else reference[9:33],
            *_arithmetic(match, moment))


_ITEM_AMOUNTS = re.compile(r'"quantity":"([0-9.]+)","specific_tax":null,"tax_group":"([A-P])",'
                           r'"type":"(BIE|SER|TAX)","unit_price":"([0-9.]+)"').findall
_PAYMENTS = re.compile(r'"payments":\[([^\]]*)\]').search
_PAYMENT_AMOUNTS = re.compile(r'\{"amount":"(-?[0-9.]+)","method":"([EVCMDA])"\}').findall
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}").fullmatch  # InvoiceRequest.request_id
_CONTROL = re.compile(r"[\x00-\x1f\x7f]").search


def _arithmetic(match: re.Match, moment: datetime) -> tuple[str | None, str | None]:
    """`checks.arithmetic_verdict`, reading only the members the tax engine needs: first the
    quick form (plain items from the text, canonical texts compared); anything it is not sure of
    is parsed and judged the general way."""
    text = match.group
    request_id, number, terminal = text("request_id")[1:-1], text("invoice_number")[1:-1], text("pos_terminal_id")[1:-1]
    if (_REQUEST_ID(request_id) and 1 <= len(number) <= 64 and 1 <= len(terminal) <= 32
            and _CONTROL(number) is None and _CONTROL(terminal) is None):
        totals = text("totals")
        if arithmetic.adds_up_plain(text("type")[1:-1], text("price_mode")[1:-1], _ITEM_AMOUNTS(text("items")),
                                    _PAYMENT_AMOUNTS(_PAYMENTS(totals).group(1)), text("reference") != "null",
                                    moment.date(), text("lines"), totals):
            return None, None
    request = json.loads("{" + _join(match, list(arithmetic.REQUEST_FIELDS)) + "}")
    totals = json.loads(match.group("totals"))
    request["payments"] = totals["payments"]
    try:
        found = arithmetic.problem(request, moment.date(), json.loads(match.group("lines")), totals)
    except Exception as exc:  # as checks.arithmetic_verdict
        found = ("invoice_refused", f"the amounts cannot be recomputed: {type(exc).__name__}")
    return found if found is not None else (None, None)

