"""From a prepared seal job to what the MCF is sent, and the 33h cross-check.

The tax engine has already computed every line and total (``job.lines`` / ``job.totals``); the
device computes them again. Each 31h carries what the device will verify (TR from the table in
force, MON = round(PR x QT) + specific tax, TS), and 33h's per-group subtotal is compared with
the agent's own before anything is normalized (product spec: "the MCF's subtotal is the
authority: on a mismatch, cancel and tell the POS exactly which amounts differ").
"""
from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable

from drivers.usb_fiscal_memory.client import InvoiceDraft, Payment, SubtotalMismatch, Totals
from drivers.usb_fiscal_memory.commands import (
    AddItem,
    ClientInfo,
    OpenInvoice,
    SpecificTax,
    SubtotalResult,
    TAX_GROUPS,
)

CENT = Decimal("0.01")


def _d(value: Any) -> Decimal:
    return Decimal(str(value))


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def build_draft(request: dict[str, Any], lines: list[dict[str, Any]], totals: dict[str, Any], *,
                nif: str, isf: str) -> InvoiceDraft:
    """The whole-invoice flow's input. Raises the driver's InvalidRequest for what it refuses."""
    ref = request.get("reference") or {}
    usd = request.get("usd_rate") or {}
    operator = request["operator"]
    opening = OpenInvoice(
        opid=operator["id"], opn=operator["name"], nif=nif, invoice_type=request["type"],
        pmode=request.get("price_mode", "TTC"), isf=isf, fn=request["invoice_number"],
        credit_reason=ref.get("nature") or None, credit_ref=ref.get("code") or None,
        crt=_d(usd["rate"]) if usd else None,
        cdt=date.fromisoformat(usd["date"]) if usd else None,
    )
    client = None
    c = request.get("client")
    if c:
        client = ClientInfo(ctype=c.get("type") or "PP", cnif=c.get("nif") or "", cnom=c.get("name") or "",
                            cadd=c.get("address") or "", ctel=c.get("phone") or "",
                            ceml=c.get("email") or "", crccm=c.get("rccm") or "")
    by_group = totals.get("by_group", {})
    items = []
    for item, line in zip(request["items"], lines):
        group = item["tax_group"]
        rate = _d(by_group[group]["rate"]) if group in by_group else Decimal("0")
        price = _d(item["unit_price"])
        qty = _d(item.get("quantity") or "1")
        ts_total = _d(line.get("specific_tax") or "0")
        specific = None
        st = item.get("specific_tax")
        if st:
            percent = st.get("percent") is not None
            specific = SpecificTax(rate=_d(st["percent"] if percent else st["per_unit"]), total=ts_total,
                                   percent=percent, desc=st.get("description"))
        items.append(AddItem(
            name=item["name"], item_type=item["type"], tax_group=group, tax_rate=rate,
            amount=_money(price * qty) + ts_total, price=price, quantity=None if qty == 1 else qty,
            desc=item.get("code"), specific_tax=specific,
            original_price=_d(item["original_price"]) if item.get("original_price") is not None else None,
            price_change_desc=item.get("price_change"),
        ))
    comments = tuple(sorted((line, text) for line, text in (request.get("comments") or {}).items()))
    payments = tuple(
        Payment(p["method"], _d(p["amount"]) if p.get("amount") is not None else None)
        for p in request.get("payments") or []
    )
    return InvoiceDraft(opening=opening, items=tuple(items), client=client, comments=comments,
                        payments=payments)


class DeviceTotalsMismatch(SubtotalMismatch):
    """33h differs from the tax engine; ``errors`` names each amount, device's and ours."""

    def __init__(self, device: Totals, agent: Totals, errors: list[dict[str, str]]) -> None:
        super().__init__(device, agent)
        self.errors = errors


def _fmt(value: Decimal) -> str:
    return f"{value:.2f}"


def compare_subtotal(sub: SubtotalResult, totals: dict[str, Any]) -> list[dict[str, str]]:
    """Every amount on which the device's 33h and the agent's totals disagree."""
    errors: list[dict[str, str]] = []
    by_group = totals.get("by_group", {})
    for group in TAX_GROUPS:
        ours = by_group.get(group)
        for key, device_value in (("total", sub.mv_groups.get(group, Decimal(0))),
                                  ("vat", sub.mt_groups.get(group, Decimal(0)))):
            agent_value = _d(ours[key]) if ours else Decimal(0)
            if device_value != agent_value:
                errors.append({"field": f"totals.by_group.{group}.{key}",
                               "message": f"device {_fmt(device_value)}, agent {_fmt(agent_value)}"})
    agent_total = _d(totals["total"])
    if sub.mv != agent_total:
        errors.append({"field": "totals.total", "message": f"device {_fmt(sub.mv)}, agent {_fmt(agent_total)}"})
    agent_ts = _d(totals.get("specific_tax") or "0")
    if sub.mts != agent_ts:
        errors.append({"field": "totals.specific_tax",
                       "message": f"device {_fmt(sub.mts)}, agent {_fmt(agent_ts)}"})
    return errors


def cross_check_for(totals: dict[str, Any]) -> Callable[[SubtotalResult], Totals]:
    """The driver's cross-check hook: the agreed (MV, MT), or DeviceTotalsMismatch."""

    def check(sub: SubtotalResult) -> Totals:
        agent = Totals(_d(totals["total"]), _d(totals["vat"]))
        errors = compare_subtotal(sub, totals)
        if errors:
            raise DeviceTotalsMismatch(Totals(sub.mv, sub.mt), agent, errors)
        return agent

    return check
