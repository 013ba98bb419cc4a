"""Pure report arithmetic, shared by the agent (X/Z/A) and the cloud (`cloud_stub/reports.py`).

Input: sealed invoices in their JSON form, exactly as stored. No I/O, no clock: the same
invoices give the same figures wherever they are summed, in any order.

Credit notes (FA, EA) carry positive amounts on the invoice; here they are kept apart
(`credits`) and subtracted in `net`: net = sales - credits, per group, per payment method and in
total.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable

from fiscal.money import fmt2

CREDIT_TYPES = ("FA", "EA")
INVOICE_TYPES = ("FV", "FT", "EV", "ET", "FA", "EA")
PAYMENT_METHODS = ("E", "V", "C", "M", "D", "A")
_ZERO = Decimal(0)


class Totals:
    """Running totals; `add(invoice)` then `result()` (JSON-ready, amounts as decimal strings)."""

    def __init__(self) -> None:
        self.count = 0
        self.by_type: dict[str, dict[str, Any]] = {}
        self.by_mode: dict[str, int] = {}
        self.side = {"sales": _side(), "credits": _side()}
        self.authorities: dict[str, dict[str, Any]] = {}
        self.first_at: str | None = None
        self.last_at: str | None = None
        self._first_key: tuple | None = None
        self._last_key: tuple | None = None

    def add(self, inv: dict[str, Any]) -> None:
        t = inv["totals"]
        sec = inv["security"]
        self.count += 1
        bt = self.by_type.setdefault(inv["type"], {"count": 0, "total": _ZERO, "vat": _ZERO})
        bt["count"] += 1
        bt["total"] += Decimal(t["total"])
        bt["vat"] += Decimal(t["vat"])
        self.by_mode[inv["mode"]] = self.by_mode.get(inv["mode"], 0) + 1
        side = self.side["credits" if inv["type"] in CREDIT_TYPES else "sales"]
        side["count"] += 1
        for key in ("total", "vat", "specific_tax", "change"):
            side[key] += Decimal(t.get(key) or 0)
        for group, g in t["by_group"].items():
            acc = side["by_group"].setdefault(group, {"rates": set(), "total": _ZERO, "ht": _ZERO, "vat": _ZERO})
            acc["rates"].add(Decimal(g["rate"]))
            for key in ("total", "ht", "vat"):
                acc[key] += Decimal(g[key])
        for p in t["payments"]:
            side["payments"][p["method"]] = side["payments"].get(p["method"], _ZERO) + Decimal(p["amount"])
        a = self.authorities.setdefault(sec["authority_id"], {"mode": inv["mode"], "count": 0,
                                                              "first": None, "last": None})
        n = sec["fiscal_number"]
        a["count"] += 1
        a["first"] = n if a["first"] is None else min(a["first"], n)
        a["last"] = n if a["last"] is None else max(a["last"], n)
        moment = datetime.fromisoformat(sec["timestamp"])
        key = (moment, sec["authority_id"], n)
        if self._first_key is None or key < self._first_key:
            self._first_key, self.first_at = key, sec["timestamp"]
        if self._last_key is None or key > self._last_key:
            self._last_key, self.last_at = key, sec["timestamp"]

    def result(self) -> dict[str, Any]:
        sales, credits = self.side["sales"], self.side["credits"]
        net = _side()
        net["count"] = sales["count"] + credits["count"]
        for key in ("total", "vat", "specific_tax", "change"):
            net[key] = sales[key] - credits[key]
        for group in set(sales["by_group"]) | set(credits["by_group"]):
            s = sales["by_group"].get(group) or {"rates": set(), "total": _ZERO, "ht": _ZERO, "vat": _ZERO}
            c = credits["by_group"].get(group) or {"rates": set(), "total": _ZERO, "ht": _ZERO, "vat": _ZERO}
            net["by_group"][group] = {"rates": s["rates"] | c["rates"],
                                      **{k: s[k] - c[k] for k in ("total", "ht", "vat")}}
        for m in set(sales["payments"]) | set(credits["payments"]):
            net["payments"][m] = sales["payments"].get(m, _ZERO) - credits["payments"].get(m, _ZERO)
        return {
            "count": self.count,
            "first_invoice_at": self.first_at,
            "last_invoice_at": self.last_at,
            "by_type": {k: {"count": v["count"], "total": fmt2(v["total"]), "vat": fmt2(v["vat"])}
                        for k, v in sorted(self.by_type.items())},
            "by_mode": dict(sorted(self.by_mode.items())),
            "sales": _render(sales),
            "credits": _render(credits),
            "net": _render(net),
            "authorities": {k: dict(v) for k, v in sorted(self.authorities.items())},
        }


def _side() -> dict[str, Any]:
    return {"count": 0, "total": _ZERO, "vat": _ZERO, "specific_tax": _ZERO, "change": _ZERO,
            "by_group": {}, "payments": {}}


def _rate(rates: set) -> str:
    return "/".join(fmt2(r) for r in sorted(rates))


def _render(side: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": side["count"],
        "total": fmt2(side["total"]),
        "ht": fmt2(sum((g["ht"] for g in side["by_group"].values()), _ZERO)),
        "vat": fmt2(side["vat"]),
        "specific_tax": fmt2(side["specific_tax"]),
        "change": fmt2(side["change"]),
        "by_group": {g: {"rate": _rate(v["rates"]), "ht": fmt2(v["ht"]), "vat": fmt2(v["vat"]),
                         "total": fmt2(v["total"])} for g, v in sorted(side["by_group"].items())},
        "payments": {m: fmt2(v) for m, v in sorted(side["payments"].items())},
    }


def aggregate(invoices: Iterable[dict[str, Any]]) -> dict[str, Any]:
    acc = Totals()
    for inv in invoices:
        acc.add(inv)
    return acc.result()


# ----------------------------------------------------------------------------- A report

def article_lines(inv: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per item of a sealed invoice (the A report). Credit-note lines keep positive
    amounts and their type (FA/EA), as on the document itself."""
    sec = inv["security"]
    client_type = (inv.get("client") or {}).get("type") or "PP"
    out = []
    for item, amounts in zip(inv["items"], inv["lines"]):
        g = inv["totals"]["by_group"].get(item["tax_group"]) or {}
        out.append({
            "invoice_id": inv["id"], "fiscal_number": sec["fiscal_number"], "authority_id": sec["authority_id"],
            "mode": inv["mode"], "type": inv["type"], "invoice_number": inv["invoice_number"],
            "date": sec["timestamp"], "item_name": item["name"], "item_code": item.get("code"),
            "item_type": item["type"], "tax_group": item["tax_group"], "rate": g.get("rate"),
            "quantity": item["quantity"], "unit_price": item["unit_price"], "total": amounts["total"],
            "ht": amounts["ht"], "vat": amounts["vat"], "specific_tax": amounts["specific_tax"],
            "client_type": client_type,
        })
    return out


def a_report(invoices: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Lines in (timestamp, authority, number) order, plus their sums (sales and credits apart)."""
    lines: list[dict[str, Any]] = []
    for inv in invoices:
        lines.extend(article_lines(inv))
    lines.sort(key=lambda l: (datetime.fromisoformat(l["date"]), l["authority_id"], l["fiscal_number"]))
    sums = {"sales": {"total": _ZERO, "ht": _ZERO, "vat": _ZERO}, "credits": {"total": _ZERO, "ht": _ZERO, "vat": _ZERO}}
    for l in lines:
        s = sums["credits" if l["type"] in CREDIT_TYPES else "sales"]
        for k in ("total", "ht", "vat"):
            s[k] += Decimal(l[k])
    return {"count": len(lines), "lines": lines,
            "sums": {side: {k: fmt2(v) for k, v in s.items()} for side, s in sums.items()}}
