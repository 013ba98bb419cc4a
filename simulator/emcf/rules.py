"""Phase 1's own validation and totals: the DGI trusts no client's arithmetic.

The totals use the simulated MCF's arithmetic (`simulator.amounts`) and rates
(`simulator.state.DEFAULT_RATES`), not the cloud's tax engine: the DGI is the authority the
cloud's figures are checked against, so it must not share their code.
"""
from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from ..amounts import GROUPS, InvoiceTotals, SpecificTax, line_amounts, money
from ..state import DEFAULT_RATES

INVOICE_TYPES = ("FV", "FT", "FA", "EV", "ET", "EA")
CREDIT_TYPES = ("FA", "EA")
ITEM_TYPES = ("BIE", "SER", "TAX")
CLIENT_TYPES = ("PP", "PM", "PC", "PL", "AO")
RATES = {g: Decimal(DEFAULT_RATES[g]) for g in GROUPS}
MAX_ITEMS = 500
# Phase 1's per-group figures (rate, total, without VAT, VAT) of a group no item uses, in the
# answer's order: built once, not per request.
EMPTY_FIGURES: dict[str, float] = {f"{name}{g.lower()}": (float(RATES[g]) if name == "t" else 0.0)
                                   for g in GROUPS for name in ("t", "ta", "ha", "va")}


class Refusal(Exception):
    """The DGI refuses the request: `{errorCode, errorDesc}`."""

    def __init__(self, code: str, desc: str, status: int = 400):
        super().__init__(desc)
        self.code = code
        self.desc = desc
        self.status = status


def _text(obj: dict, key: str, limit: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise Refusal("INVALID_FIELD", f"`{key}` must be text of 1 to {limit} characters")
    return value


def number(value: Any, key: str, *, positive: bool = False) -> Decimal:
    """A JSON number as the decimal its text says (float noise never changes a total)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refusal("INVALID_FIELD", f"`{key}` must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Refusal("INVALID_FIELD", f"`{key}` must be a finite number")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise Refusal("INVALID_FIELD", f"`{key}` must be a number") from None
    if amount < 0 or (positive and amount == 0):
        raise Refusal("INVALID_FIELD", f"`{key}` must be {'positive' if positive else 'zero or more'}")
    if abs(amount) >= Decimal(10) ** 13:
        raise Refusal("INVALID_FIELD", f"`{key}` is too large")
    return amount


def validate(body: Any, nif: str, isf: str) -> dict[str, Any]:
    """Check a phase-1 body for this point of sale; returns {rn, type, total, vtotal, groups}."""
    if not isinstance(body, dict):
        raise Refusal("INVALID_BODY", "the body must be a JSON object")
    if body.get("nif") != nif:
        raise Refusal("NIF_MISMATCH", "`nif` is not the NIF of the token's point of sale")
    if body.get("isf") not in (None, isf):
        raise Refusal("ISF_MISMATCH", "`isf` is not the ISF of the token's point of sale")
    rn = _text(body, "rn", 50)
    mode = body.get("mode")
    if mode not in ("ttc", "ht", "TTC", "HT"):
        raise Refusal("INVALID_FIELD", "`mode` must be ttc or ht")
    type_ = body.get("type")
    if type_ not in INVOICE_TYPES:
        raise Refusal("INVALID_FIELD", f"`type` must be one of {', '.join(INVOICE_TYPES)}")
    if type_ in CREDIT_TYPES and not (isinstance(body.get("reference"), str) and len(body["reference"]) == 24):
        raise Refusal("REFERENCE_REQUIRED", "a credit note (FA, EA) needs the 24-character `reference`")
    client = body.get("client")
    if client is not None:
        if not isinstance(client, dict) or client.get("type", "PP") not in CLIENT_TYPES:
            raise Refusal("INVALID_FIELD", f"`client.type` must be one of {', '.join(CLIENT_TYPES)}")
    payments = body.get("payment") or []
    if not isinstance(payments, list) or not all(isinstance(p, dict) for p in payments):
        raise Refusal("INVALID_FIELD", "`payment` must be a list of {name, amount}")
    for p in payments:
        _text(p, "name", 32)
        number(p.get("amount"), "payment.amount")
    return {"rn": rn, "type": type_, **totals(body.get("items"), mode.lower() == "ht")}


def totals(items: Any, ht_mode: bool) -> dict[str, Any]:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise Refusal("INVALID_FIELD", f"`items` must list 1 to {MAX_ITEMS} items")
    acc = InvoiceTotals(ht_mode=ht_mode, rates=RATES)
    for item in items:
        if not isinstance(item, dict):
            raise Refusal("INVALID_FIELD", "each item must be an object")
        _text(item, "name", 64)
        if item.get("type") not in ITEM_TYPES:
            raise Refusal("INVALID_FIELD", f"item `type` must be one of {', '.join(ITEM_TYPES)}")
        group = item.get("taxGroup")
        if not isinstance(group, str) or group.upper() not in GROUPS or len(group) != 1:
            raise Refusal("INVALID_FIELD", "item `taxGroup` must be a letter A to P")
        group = group.upper()
        specific = None
        if item.get("taxSpecificAmount") is not None:
            specific = SpecificTax(number(item["taxSpecificAmount"], "taxSpecificAmount"), percent=False)
        amounts = line_amounts(number(item.get("price"), "price"),
                               number(item.get("quantity"), "quantity", positive=True),
                               RATES[group], ht_mode, specific)
        acc.add(group, amounts)
    sub = acc.subtotal()
    figures = dict(EMPTY_FIGURES)  # the groups no item uses: their rate, and zeros
    for g in acc.base_by_group:
        low = g.lower()
        figures[f"ta{low}"] = float(sub.mv_by_group[g])
        figures[f"ha{low}"] = float(money(sub.mv_by_group[g] - sub.mt_by_group[g]))
        figures[f"va{low}"] = float(sub.mt_by_group[g])
    figures["ts"] = float(sub.mts)
    return {"total": money(sub.mv), "vtotal": money(sub.mt), "figures": figures}
