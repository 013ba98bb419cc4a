"""A sealed ledger invoice as the DGI's e-MCF request body (`POST /api/invoice`, spec emcf.md).

Amounts go as JSON numbers made from the invoice's decimal strings (the DGI reads floats; the
text of a two-decimal amount survives the round trip). `rn` is the invoice's id: unique per
outlet, and what the forwarder looks the request up by.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

PAYMENT_NAMES = {"E": "ESPECES", "V": "VIREMENT", "C": "CARTEBANCAIRE", "M": "MOBILEMONEY", "D": "CHEQUES",
                 "A": "AUTRE"}


def _num(text: Any) -> float | None:
    return None if text is None else float(Decimal(str(text)))


def _item(item: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"code": item.get("code"), "name": item["name"], "type": item["type"],
                           "price": _num(item["unit_price"]), "quantity": _num(item.get("quantity", "1")),
                           "taxGroup": item["tax_group"]}
    if item.get("original_price") is not None:
        out["originalPrice"] = _num(item["original_price"])
        out["priceModification"] = item.get("price_change")
    specific = item.get("specific_tax")
    if specific:
        if specific.get("per_unit") is not None:
            out["taxSpecificAmount"] = _num(specific["per_unit"])
        if specific.get("percent") is not None:
            out["taxSpecificValue"] = _num(specific["percent"])
    return out


def _client(client: dict | None) -> dict | None:
    if not client:
        return None
    return {"nif": client.get("nif"), "name": client.get("name"), "contact": client.get("phone") or client.get("email"),
            "address": client.get("address"), "type": client.get("type", "PP")}


def emcf_request(invoice: dict) -> dict[str, Any]:
    totals = invoice.get("totals") or {}
    body: dict[str, Any] = {
        "nif": invoice["merchant_nif"],
        "rn": invoice["id"],
        "mode": invoice.get("price_mode", "TTC").lower(),
        "isf": invoice["isf"],
        "type": invoice["type"],
        "items": [_item(i) for i in invoice["items"]],
        "operator": {"id": (invoice.get("operator") or {}).get("id"),
                     "name": (invoice.get("operator") or {}).get("name")},
        "client": _client(invoice.get("client")),
        "payment": [{"name": PAYMENT_NAMES.get(p["method"], p["method"]), "amount": _num(p["amount"])}
                    for p in totals.get("payments", [])],
        "reference": None, "referenceType": None, "referenceDesc": None,
        "curCode": None, "curRate": None, "curDate": None,
    }
    reference = invoice.get("reference")
    if reference:
        body["reference"] = reference.get("code")
        body["referenceType"] = reference.get("nature")
    usd = invoice.get("usd_rate")
    if usd:
        body.update(curCode="USD", curRate=_num(usd.get("rate")), curDate=f"{usd.get('date')} 00:00:00")
    for line, text in (invoice.get("comments") or {}).items():
        body[f"cmt{line.lower()}"] = text
    return body


def our_totals(invoice: dict) -> tuple[Decimal, Decimal]:
    """(total, VAT) as the ledger holds them: what the DGI's phase 1 must agree with."""
    totals = invoice.get("totals") or {}
    return Decimal(str(totals.get("total", "0"))), Decimal(str(totals.get("vat", "0")))


def as_amount(value: Any) -> Decimal | None:
    """A JSON number from the DGI as a two-decimal amount (None if it is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return Decimal(repr(value)).quantize(Decimal("0.01"))
