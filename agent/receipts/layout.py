"""The normalized-invoice receipt as a list of layout lines (DGI layout, protocol chapter 2).

One layout, three renderers: text (32/42/48 columns), PDF (A4 and 80 mm roll) and ESC/POS. The
layout holds every mandatory element: taxpayer header, invoice type and SFE number, the
DUPLICATA / FACTURE D'AVOIR / EXPORTATION / FACTURE D'ACOMPTE mentions, operator, ISF, client,
items with group label and item type, T.S. lines, per-group totals, total VAT, TTC, payments,
change, number of items, the security block and the QR payload.

Amounts, quantities, rates and times print through `fiscal.printing` (the cloud's reports too).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from fiscal.printing import PAYMENT_NAMES, fmt_amount, fmt_qty, fmt_rate, fmt_time
from fiscal.tax import TaxTable

TITLES = {
    "FV": "FACTURE DE VENTE",
    "FT": "FACTURE D'ACOMPTE",
    "EV": "FACTURE DE VENTE À L'EXPORTATION",
    "ET": "FACTURE D'ACOMPTE À L'EXPORTATION",
    "FA": "FACTURE D'AVOIR",
    "EA": "FACTURE D'AVOIR À L'EXPORTATION",
}
EXPORT_TYPES = ("EV", "ET", "EA")
CREDIT_TYPES = ("FA", "EA")
NATURES = {"COR": "Correction", "RAN": "Annulation", "RAM": "Retour de marchandises",
           "RRR": "Rabais, remise, ristourne"}
# 2Bh taxpayer options of the MCF (I0..I4) and the header fields they fill.
DEVICE_TAXPAYER_FIELDS = {"I0": "name", "I1": "address", "I2": "city", "I3": "phone", "I4": "email"}


def group_code(code: str) -> str:
    """`TESTFACTHQBAX2F3K22NMDYR` → `TEST-FACT-HQBA-X2F3-K22N-MDYR` (as the example prints it)."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


@dataclass(frozen=True)
class Header:
    name: str
    nif: str
    rccm: str = ""
    shop: str = ""
    address: str = ""
    city: str = ""
    phone: str = ""
    email: str = ""


def header_for(identity, invoice: dict, device_info: dict | None = None) -> Header:
    """The taxpayer header: the enrollment's taxpayer data (cloud registry), and for a device
    invoice the MCF's own 2Bh data (I0..I4) where the agent has it. Missing parts are left out."""
    tp = dict(getattr(identity, "taxpayer", None) or {})
    fields = {
        "name": tp.get("name") or getattr(identity, "merchant_name", "") or "",
        "nif": invoice.get("merchant_nif") or getattr(identity, "merchant_nif", ""),
        "rccm": tp.get("rccm") or "",
        "shop": getattr(identity, "outlet_name", "") or "",
        "address": tp.get("address") or "",
        "city": tp.get("city") or "",
        "phone": tp.get("phone") or "",
        "email": tp.get("email") or "",
    }
    if invoice.get("mode") == "device" and device_info:
        for key, value in device_info.items():
            name = DEVICE_TAXPAYER_FIELDS.get(key, key)
            if name in fields and value and str(value).strip():
                fields[name] = str(value).strip()
    return Header(**fields)


@dataclass(frozen=True)
class Line:
    """One layout element. kind: center | pair | item | rule | blank | text | qr."""

    kind: str
    left: str = ""
    right: str = ""
    mid: str = ""
    bold: bool = False


@dataclass
class Receipt:
    invoice_id: str
    lines: list[Line] = field(default_factory=list)
    qr_payload: str = ""

    def add(self, kind: str, left: str = "", right: str = "", mid: str = "", bold: bool = False) -> None:
        self.lines.append(Line(kind, left, right, mid, bold))


def build_receipt(invoice: dict, header: Header, *, duplicate: bool = False,
                  table: TaxTable | None = None) -> Receipt:
    if invoice.get("status") != "sealed":
        raise ValueError("only a sealed invoice has a receipt")
    table = table or TaxTable.load()
    r = Receipt(invoice["id"], qr_payload=invoice["security"]["qr_payload"])
    day = datetime.fromisoformat(invoice["security"]["timestamp"]).date()

    # -- taxpayer
    r.add("center", header.name, bold=True)
    r.add("pair", "NIF:", header.nif)
    if header.rccm:
        r.add("pair", "RCCM:", header.rccm)
    if header.shop:
        r.add("center", header.shop, bold=True)
    for text in (header.address, header.city):
        if text:
            r.add("center", text)
    if header.phone:
        r.add("center", f"TEL: {header.phone}")
    if header.email:
        r.add("center", f"Email: {header.email}")
    r.add("blank")

    # -- type, number, mentions
    inv_type = invoice["type"]
    r.add("center", TITLES[inv_type], bold=True)
    r.add("center", f"No : {invoice['invoice_number']}", bold=True)
    if duplicate:
        r.add("center", "*** DUPLICATA ***", bold=True)
    if inv_type in CREDIT_TYPES and invoice.get("reference"):
        ref = invoice["reference"]
        r.add("pair", "Réf. facture initiale:", ref["code"])
        r.add("pair", "Nature:", f"{ref['nature']} {NATURES.get(ref['nature'], '')}".strip())
    r.add("blank")

    # -- operator, ISF, client
    r.add("pair", "Vendeur:", invoice["operator"]["name"])
    r.add("pair", "ISF:", invoice["isf"])
    client = invoice.get("client") or {}
    r.add("pair", "Type de l'acheteur :", client.get("type") or "PP")
    for key, label in (("nif", "NIF de l'acheteur:"), ("name", "Nom de l'acheteur:"),
                       ("address", "Adresse:"), ("phone", "Tél:"), ("email", "Email:"), ("rccm", "RCCM:")):
        if client.get(key):
            r.add("pair", label, client[key])
    for key in sorted(invoice.get("comments") or {}):
        r.add("text", invoice["comments"][key])
    r.add("blank")

    # -- items
    r.add("rule")
    r.add("item", "# Nom", "T.T.C.", "Qté x P.U.")
    for n, (item, amounts) in enumerate(zip(invoice["items"], invoice["lines"]), start=1):
        label = table.label(item["tax_group"], day) if _known(table, item["tax_group"], day) else item["tax_group"]
        name = f"{n} {item['name']} ({label})({item['type']})"
        qty = Decimal(item["quantity"])
        mid = "" if qty == 1 else f"{fmt_qty(qty)} x {fmt_amount(item['unit_price'])}"
        r.add("item", name, fmt_amount(amounts["total"]), mid)
        if item.get("original_price"):
            r.add("text", f"  Prix initial {fmt_amount(item['original_price'])} ({item['price_change']})")
        ts = item.get("specific_tax")
        if ts:
            what = f"{fmt_amount(ts['per_unit'])}/u" if ts.get("per_unit") else fmt_rate(ts["percent"])
            r.add("pair", f"  T.S. {what}", fmt_amount(amounts["specific_tax"]))
    r.add("rule")
    r.add("blank")

    # -- totals per group, VAT, TTC
    totals = invoice["totals"]
    exempt: list[str] = []
    for group in sorted(totals["by_group"]):
        g = totals["by_group"][group]
        label = table.label(group, day) if _known(table, group, day) else group
        if label.endswith("-EX"):  # as in the DGI example: exempt totals after the taxed groups
            exempt.append(group)
            continue
        rate = fmt_rate(g["rate"])
        if Decimal(g["ht"]):
            r.add("pair", f"Total H.T.[{group}] {rate}", fmt_amount(g["ht"]))
        if Decimal(g["vat"]):
            r.add("pair", f"Total TVA [{group}] {rate}", fmt_amount(g["vat"]))
    for group in exempt:
        if Decimal(totals["by_group"][group]["total"]):
            r.add("pair", f"Total EXONERES [{group}]", fmt_amount(totals["by_group"][group]["total"]))
    if Decimal(totals.get("specific_tax") or 0):
        r.add("pair", "Total T.S.", fmt_amount(totals["specific_tax"]))
    r.add("blank")
    r.add("pair", "Total TVA", fmt_amount(totals["vat"]))
    r.add("blank")
    r.add("pair", "TOTAL TTC", fmt_amount(totals["total"]), bold=True)
    if totals.get("usd_equivalent") and invoice.get("usd_rate"):
        usd = invoice["usd_rate"]
        r.add("pair", f"Équivalent USD (1 USD = {fmt_amount(usd['rate'])})", fmt_amount(totals["usd_equivalent"]))
    r.add("blank")
    for p in totals["payments"]:
        r.add("pair", f"{PAYMENT_NAMES.get(p['method'], p['method'])}:", fmt_amount(p["amount"]))
    if Decimal(totals.get("change") or 0):
        r.add("pair", "RENDU:", fmt_amount(totals["change"]))
    r.add("pair", "Nombre d'articles:", str(len(invoice["items"])))
    r.add("blank")

    # -- security elements
    sec = invoice["security"]
    if invoice["mode"] == "device":
        r.add("center", "CODE DEF/DGI")
        r.add("center", group_code(sec["code"]), bold=True)
        r.add("pair", "DEF NIM:", sec["authority_id"])
        r.add("pair", "DEF Compteurs:", sec["counters"]["label"])
        r.add("pair", "DEF Heure:", fmt_time(sec["timestamp"]))
    else:
        r.add("center", "CODE STALELA")
        r.add("center", group_code(sec["code"]), bold=True)
        r.add("pair", "AUTORITÉ:", sec["authority_id"])
        r.add("pair", "N° FISCAL:", f"{sec['fiscal_number']} ({sec['counters']['label']})")
        r.add("pair", "HEURE:", fmt_time(sec["timestamp"], with_zone=True))
    r.add("blank")
    r.add("qr", sec["qr_payload"])
    return r


def _known(table: TaxTable, group: str, day) -> bool:
    try:
        table.group(group, day)
        return True
    except Exception:
        return False
