"""X/Z/A reports as printable text (and PDF through the same lines)."""
from __future__ import annotations

from typing import Any

from ..receipts.layout import PAYMENT_NAMES, fmt_amount, fmt_qty, fmt_rate, fmt_time

TYPE_NAMES = {"FV": "Ventes", "FT": "Acomptes", "EV": "Ventes export", "ET": "Acomptes export",
              "FA": "Avoirs", "EA": "Avoirs export"}


def _pair(left: str, right: str, width: int) -> str:
    if len(left) + 1 + len(right) > width:
        return left + "\n" + right.rjust(width)
    return left + " " * (width - len(left) - len(right)) + right


def _rate(text: str) -> str:
    return "/".join(fmt_rate(r) for r in text.split("/")) if text else ""


def _side(title: str, side: dict[str, Any], width: int) -> list[str]:
    out = [title, "-" * width, _pair("Nombre de factures", str(side["count"]), width)]
    for group, g in side["by_group"].items():
        out.append(f"[{group}] {_rate(g['rate'])}")
        out.append(_pair("  H.T.", fmt_amount(g["ht"]), width))
        out.append(_pair("  TVA", fmt_amount(g["vat"]), width))
        out.append(_pair("  T.T.C.", fmt_amount(g["total"]), width))
    out.append(_pair("Total H.T.", fmt_amount(side["ht"]), width))
    out.append(_pair("Total TVA", fmt_amount(side["vat"]), width))
    if side["specific_tax"] not in ("0.00", "-0.00"):
        out.append(_pair("Total T.S.", fmt_amount(side["specific_tax"]), width))
    out.append(_pair("TOTAL TTC", fmt_amount(side["total"]), width))
    for m, amount in side["payments"].items():
        out.append(_pair(f"{PAYMENT_NAMES.get(m, m)}:", fmt_amount(amount), width))
    if side["change"] not in ("0.00", "-0.00"):
        out.append(_pair("RENDU:", fmt_amount(side["change"]), width))
    out.append("")
    return out


def report_text(body: dict[str, Any], width: int = 42) -> str:
    kind = body["kind"]
    if kind == "A":
        return a_report_text(body)
    t = body["totals"]
    title = f"RAPPORT Z N° {body['number']}" if kind == "Z" else "RAPPORT X (lecture, non clôturé)"
    out = [title.center(width).rstrip(), body.get("merchant_name", "").center(width).rstrip(),
           _pair("NIF:", body["merchant_nif"], width), _pair("ISF:", body["isf"], width),
           _pair("Point de vente:", body["outlet_id"], width),
           _pair("Établi le:", fmt_time(body["created_at"], with_zone=True), width)]
    if kind == "X":
        out.append(_pair("Depuis le Z N°:", str(body["since_z"]) if body["since_z"] else "(aucun)", width))
    if t["first_invoice_at"]:
        out.append(_pair("Première facture:", fmt_time(t["first_invoice_at"]), width))
        out.append(_pair("Dernière facture:", fmt_time(t["last_invoice_at"]), width))
    out.append("")
    out.append("FACTURES PAR TYPE")
    out.append("-" * width)
    for typ, v in t["by_type"].items():
        out.append(_pair(f"{typ} {TYPE_NAMES.get(typ, '')} ({v['count']})", fmt_amount(v["total"]), width))
    if not t["by_type"]:
        out.append("(aucune facture)")
    out.append("")
    out += _side("VENTES", t["sales"], width)
    if t["credits"]["count"]:
        out += _side("AVOIRS (déduits)", t["credits"], width)
    out += _side("NET (ventes - avoirs)", t["net"], width)
    out.append("NUMÉROS FISCAUX")
    out.append("-" * width)
    for auth, a in t["authorities"].items():
        out.append(_pair(auth, f"{a['first']}..{a['last']} ({a['count']})", width))
    h = body.get("health")
    if h:
        out.append("")
        out.append(_pair("Signataire:", str(h.get("mode") or "-"), width))
        out.append(_pair("Numéros restants:", str(h["credential"].get("remaining_numbers")), width))
        out.append(_pair("Sync en attente:", str(h["sync"].get("pending")), width))
    if kind == "Z":
        out.append("")
        out.append("EMPREINTE (SHA-256)")
        out += [body["hash"][i:i + width] for i in range(0, len(body["hash"]), width)]
        out.append("Précédente:")
        prev = body["chain"]["prev_hash"]
        out += [prev[i:i + width] for i in range(0, len(prev), width)]
    return "\n".join(out) + "\n"


def a_report_text(body: dict[str, Any]) -> str:
    head = f"RAPPORT A (articles) {body['outlet_id']} du {body['from'][:10]} au {body['to'][:10]} (exclu)"
    cols = f"{'Date':19} {'Autorité':14} {'N°':>7} {'T':2} {'Article':20} {'Gr':2} {'Taux':>6} " \
           f"{'Qté':>7} {'P.U.':>10} {'H.T.':>11} {'TVA':>10} {'T.T.C.':>11} Cl"
    out = [head, "", cols, "-" * len(cols)]
    for l in body["lines"]:
        out.append(f"{fmt_time(l['date'])} {l['authority_id'][:14]:14} {l['fiscal_number']:>7} {l['type']:2} "
                   f"{l['item_name'][:20]:20} {l['tax_group']:2} {fmt_rate(l['rate'] or '0'):>6} "
                   f"{fmt_qty(l['quantity']):>7} {fmt_amount(l['unit_price']):>10} {fmt_amount(l['ht']):>11} "
                   f"{fmt_amount(l['vat']):>10} {fmt_amount(l['total']):>11} {l['client_type']}")
    out.append("-" * len(cols))
    s = body["sums"]
    out.append(f"Lignes: {body['count']}   Ventes TTC {fmt_amount(s['sales']['total'])}"
               f"   Avoirs TTC {fmt_amount(s['credits']['total'])}")
    return "\n".join(out) + "\n"


def report_pdf(body: dict[str, Any]) -> bytes:
    from fpdf import FPDF

    from ..receipts.render import latin1

    text = report_text(body)
    wide = body["kind"] == "A"
    pdf = FPDF(unit="mm", format="A4", orientation="L" if wide else "P")
    pdf.set_margins(10, 10, 10)
    pdf.set_auto_page_break(True, margin=10)
    pdf.set_creator("Stalela Edge")
    pdf.add_page()
    size = 7 if wide else 10
    for i, line in enumerate(text.splitlines()):
        pdf.set_font("Courier", "B" if i == 0 else "", size)
        pdf.cell(0, size * 0.45, latin1(line), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
