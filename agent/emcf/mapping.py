"""The e-MCF invoice body, as the DGI's clients send it, becomes our InvoiceRequest; our computed
and sealed invoices become e-MCF answers (docs/emcf-compat.md has the whole table).

Pure functions: no I/O, no service. Amounts arrive as JSON numbers; `read_json` keeps each one's
decimal text (a Decimal, never a float), so 0.1 + 0.2 noise in a client's JSON is rounded away
to the cent and never reaches a total.
"""
from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson

from fiscal.models import CREDIT_TYPES, MAX_ITEMS, TAX_GROUPS
from fiscal.money import CENT, MAX_AMOUNT, MILLI, fmt2, fmt_qty

# ------------------------------------------------------------------------------ errors
# errorCode values of the local e-MCF API (strings, as the DGI's service writes them). The table
# with their meaning is in docs/emcf-compat.md.
UNAUTHORIZED = "1"
WRONG_API = "2"
NOT_FOUND = "3"
METHOD_NOT_ALLOWED = "4"
BAD_BODY = "10"
INVALID_INVOICE = "11"
NIF_MISMATCH = "12"
BODY_TOO_LARGE = "13"
TOO_MANY_PENDING = "20"
UNKNOWN_UID = "30"
EXPIRED = "31"
CANCELLED = "32"
TOTALS_DIFFER = "33"
ALREADY_CONFIRMED = "34"
CONFIRM_IN_PROGRESS = "35"
RATES_CHANGED = "36"
CONFLICT = "37"
SEALING_BLOCKED = "40"
STORAGE_FAILURE = "41"
INTERNAL = "50"


class EmcfError(Exception):
    """A refusal in the e-MCF shape: {errorCode, errorDesc} with an HTTP status."""

    def __init__(self, code: str, desc: str, status: int = 400) -> None:
        super().__init__(desc)
        self.code = code
        self.desc = desc
        self.status = status

    def body(self) -> dict[str, str]:
        return {"errorCode": self.code, "errorDesc": self.desc}


# ------------------------------------------------------------------------------ JSON
class _Constant(ValueError):
    pass


def _refuse_constant(text: str):
    raise _Constant(text)


def read_json(raw: bytes) -> Any:
    """The body, numbers with a fraction or exponent as Decimal (their decimal text, exactly)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EmcfError(BAD_BODY, "the body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except _Constant as exc:
        raise EmcfError(BAD_BODY, f"{exc} is not a number: amounts are finite JSON numbers") from None
    except json.JSONDecodeError as exc:
        raise EmcfError(BAD_BODY, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError):  # an integer too long to read, nesting too deep
        raise EmcfError(BAD_BODY, "the body is not valid JSON: a number too long or nesting too deep") from None


def _decimal_as_number(value: Any) -> orjson.Fragment:
    if type(value) is Decimal:
        text = str(value)  # plain digits for our amounts and rates; "1E+3" is written out
        return orjson.Fragment(text if "E" not in text else format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """JSON text with each Decimal written as a number in its own digits ("4064.00", not a float
    rounded by the encoder). orjson writes it (≈ 12 µs for a phase 1 answer, the json module
    ≈ 40); the Decimals written here are finite (what we computed or checked)."""
    return orjson.dumps(value, default=_decimal_as_number, option=orjson.OPT_NON_STR_KEYS).decode()


# ------------------------------------------------------------------------------ numbers
_PLAIN_NUMBER = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?")


def number(value: Any, where: str, places: Decimal = CENT) -> Decimal:
    """A finite, non-negative number rounded half away from zero to `places` (cents by default).

    JSON numbers (int, or Decimal from `read_json`) are taken through their decimal text; a
    string holding a plain decimal is accepted too (some clients quote amounts)."""
    if isinstance(value, bool) or value is None:
        raise EmcfError(INVALID_INVOICE, f"{where}: a number is required")
    if isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, Decimal):
        d = value
    elif isinstance(value, float):  # a Python caller: its shortest decimal text, never its binary value
        d = Decimal(repr(value))
    elif isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value.strip()):
        d = Decimal(value.strip())
    else:
        raise EmcfError(INVALID_INVOICE, f"{where}: {value!r} is not a number")
    if not d.is_finite():
        raise EmcfError(INVALID_INVOICE, f"{where}: {value} is not a finite number")
    if d < 0:
        raise EmcfError(INVALID_INVOICE, f"{where}: {d} is negative")
    if d > MAX_AMOUNT:
        raise EmcfError(INVALID_INVOICE, f"{where}: {d} is larger than {MAX_AMOUNT}")
    try:
        return d.quantize(places, rounding=ROUND_HALF_UP)
    except InvalidOperation:  # pragma: no cover - bounded above
        raise EmcfError(INVALID_INVOICE, f"{where}: {d} is not a usable number") from None


def _money(value: Any, where: str) -> str:
    return fmt2(number(value, where))


def _qty(value: Any, where: str) -> str:
    return fmt_qty(number(value, where, MILLI))


# ------------------------------------------------------------------------------ the request
# e-MCF payment names → our payment methods (docs/emcf-compat.md). Names are compared in upper
# case without spaces, "_" or "-" ("Mobile Money" = MOBILEMONEY).
PAYMENT_NAMES = {
    "ESPECES": "E", "CASH": "E",
    "VIREMENT": "V",
    "CARTEBANCAIRE": "C", "CARTE": "C",
    "MOBILEMONEY": "M",
    "CHEQUES": "D", "CHEQUE": "D",
    "CREDIT": "A", "AUTRE": "A",
}
PAYMENT_TYPES = [
    {"type": "ESPECES", "description": "Espèces"},
    {"type": "VIREMENT", "description": "Virement"},
    {"type": "CARTEBANCAIRE", "description": "Carte bancaire"},
    {"type": "MOBILEMONEY", "description": "Mobile money"},
    {"type": "CHEQUES", "description": "Chèques"},
    {"type": "CREDIT", "description": "Crédit"},
    {"type": "AUTRE", "description": "Autre"},
]
INVOICE_TYPES = [
    {"type": "FV", "description": "Facture de vente"},
    {"type": "FT", "description": "Facture d'acompte"},
    {"type": "FA", "description": "Facture d'avoir"},
    {"type": "EV", "description": "Facture de vente à l'exportation"},
    {"type": "ET", "description": "Facture d'acompte à l'exportation"},
    {"type": "EA", "description": "Facture d'avoir à l'exportation"},
]
ITEM_TYPES = [
    {"type": "BIE", "description": "Biens"},
    {"type": "SER", "description": "Services"},
    {"type": "TAX", "description": "Taxes et redevances"},
]
CLIENT_TYPES = [
    {"type": "PP", "description": "Personne physique"},
    {"type": "PM", "description": "Personne morale"},
    {"type": "PC", "description": "Professionnel commerçant"},
    {"type": "PL", "description": "Profession libérale"},
    {"type": "AO", "description": "Ambassade ou organisation internationale"},
]
REFERENCE_TYPES = [
    {"type": "COR", "description": "Correction de la facture"},
    {"type": "RAN", "description": "Retour avant la livraison (annulation)"},
    {"type": "RAM", "description": "Retour de marchandises"},
    {"type": "RRR", "description": "Rabais, remise ou ristourne"},
]

# The operator id printed when a client sends `operator.id: null` (clients often do).
NO_OPERATOR_ID = "0"
# The comment line that carries `referenceDesc` (a credit note's reason) when cmth is not used.
REFERENCE_DESC_LINE = "H"


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _text(value: Any) -> Any:
    """Identifiers clients send as numbers (an operator id 7, an rn 42) become text; anything
    else goes on unchanged so that validation names the field."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def to_invoice_request(body: Any, *, request_id: str, terminal: str, merchant_nif: str) -> dict[str, Any]:
    """Our InvoiceRequest (JSON form, not yet validated) for an e-MCF phase 1 body. Refuses what
    has no counterpart; the rest is judged by the same validation as /v1/invoices."""
    if not isinstance(body, dict):
        raise EmcfError(BAD_BODY, "the body is a JSON object (the invoice)")
    nif = body.get("nif")
    if _present(nif) and (not isinstance(nif, str) or nif.strip().upper() != merchant_nif.upper()):
        raise EmcfError(NIF_MISMATCH, f"nif {nif!r} is not this point of sale's taxpayer ({merchant_nif})", 403)
    if not _present(body.get("rn")):
        raise EmcfError(INVALID_INVOICE, "rn: the seller's invoice number is required")
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise EmcfError(INVALID_INVOICE, "items: a non-empty list of items is required")
    if len(items) > MAX_ITEMS:
        raise EmcfError(INVALID_INVOICE, f"items: at most {MAX_ITEMS} items per invoice, not {len(items)}")
    invoice_type = _upper(body.get("type"))
    request: dict[str, Any] = {
        "request_id": request_id,
        "type": invoice_type,
        "price_mode": _price_mode(body.get("mode")),
        "invoice_number": _text(body.get("rn")),
        "pos_terminal_id": terminal,
        "operator": _operator(body.get("operator")),
        "client": _client(body.get("client")),
        "items": [_item(item, f"items[{i}]") for i, item in enumerate(items)],
        "payments": _payments(body.get("payment")),
        "comments": _comments(body),
        "reference": _reference(body, invoice_type),
        "usd_rate": _usd_rate(body),
    }
    desc = body.get("referenceDesc")
    if request["reference"] is not None and _present(desc):
        request["comments"][REFERENCE_DESC_LINE] = desc
    return request


def _price_mode(mode: Any) -> Any:
    if mode is None:
        return "TTC"  # the DGI's default: prices include VAT
    if isinstance(mode, str) and mode.strip().lower() in ("ttc", "ht"):
        return mode.strip().upper()
    raise EmcfError(INVALID_INVOICE, f"mode: {mode!r} is not ttc or ht")


def _operator(op: Any) -> dict[str, Any]:
    if not isinstance(op, dict):
        raise EmcfError(INVALID_INVOICE, "operator: {id, name} is required")
    op_id = _text(op.get("id"))
    return {"id": NO_OPERATOR_ID if op_id is None or op_id == "" else op_id, "name": op.get("name")}


def _client(client: Any) -> dict[str, Any] | None:
    if client is None:
        return None
    if not isinstance(client, dict):
        raise EmcfError(INVALID_INVOICE, "client: an object or null")
    out: dict[str, Any] = {}
    if _present(client.get("type")):
        out["type"] = _upper(client["type"])
    for ours, theirs in (("nif", "nif"), ("name", "name"), ("address", "address")):
        if _present(client.get(theirs)):
            out[ours] = _text(client[theirs])
    contact = _text(client.get("contact"))
    if _present(contact):
        # One contact field on the e-MCF side: an e-mail address goes to email, anything else to phone.
        out["email" if isinstance(contact, str) and "@" in contact else "phone"] = contact
    return out or None


def _item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise EmcfError(INVALID_INVOICE, f"{where}: an item is an object")
    out: dict[str, Any] = {
        "name": item.get("name"),
        "type": _upper(item.get("type")),
        "tax_group": _upper(item.get("taxGroup")),
        "unit_price": _money(item.get("price"), f"{where}.price"),
        "quantity": "1" if item.get("quantity") is None else _qty(item["quantity"], f"{where}.quantity"),
    }
    if _present(item.get("code")):
        out["code"] = _text(item["code"])
    change = _price_change(item, where, out["unit_price"])
    if change is not None:
        out["original_price"], out["price_change"] = change
    specific = _specific_tax(item, where, out["quantity"])
    if specific is not None:
        out["specific_tax"] = specific
    return out


def _price_change(item: dict, where: str, price: str) -> tuple[str, Any] | None:
    """originalPrice / priceModification → original_price / price_change. Ours go together;
    clients often send only originalPrice: the description is then the kind of change."""
    if item.get("originalPrice") is None:
        if _present(item.get("priceModification")):
            raise EmcfError(INVALID_INVOICE, f"{where}.priceModification: needs originalPrice")
        return None
    original = _money(item["originalPrice"], f"{where}.originalPrice")
    description = item.get("priceModification")
    if not _present(description):
        if Decimal(original) == Decimal(price):
            return None  # "changed" to the same price: nothing to print
        description = "REMISE" if Decimal(original) > Decimal(price) else "MAJORATION"
    return original, description


def _specific_tax(item: dict, where: str, quantity: str) -> dict[str, str] | None:
    """taxSpecificValue (per unit, the MCF's TSR) and taxSpecificAmount (the line's total T.S.,
    the MCF's TS). With only the amount, the per-unit value is amount / quantity, to the cent."""
    value, amount = item.get("taxSpecificValue"), item.get("taxSpecificAmount")
    per_unit = None
    if value is not None:
        per_unit = number(value, f"{where}.taxSpecificValue")
    elif amount is not None:
        total = number(amount, f"{where}.taxSpecificAmount")
        per_unit = (total / Decimal(quantity)).quantize(CENT, rounding=ROUND_HALF_UP)
        if per_unit * Decimal(quantity) != total:
            raise EmcfError(INVALID_INVOICE, f"{where}.taxSpecificAmount: {total} is not a per-unit amount "
                                             f"times the quantity {quantity}; send taxSpecificValue")
    if per_unit is None or per_unit == 0:
        return None
    return {"per_unit": fmt2(per_unit)}


def _payments(payments: Any) -> list[dict[str, Any]]:
    if payments is None:
        return []
    if not isinstance(payments, list):
        raise EmcfError(INVALID_INVOICE, "payment: a list of {name, amount}")
    out = []
    for i, p in enumerate(payments):
        if not isinstance(p, dict):
            raise EmcfError(INVALID_INVOICE, f"payment[{i}]: an object {{name, amount}}")
        name = p.get("name")
        key = re.sub(r"[\s_-]", "", name).upper() if isinstance(name, str) else None
        if key not in PAYMENT_NAMES:
            known = ", ".join(t["type"] for t in PAYMENT_TYPES)
            raise EmcfError(INVALID_INVOICE, f"payment[{i}].name: {name!r} is not a payment type ({known})")
        line: dict[str, Any] = {"method": PAYMENT_NAMES[key]}
        if p.get("amount") is not None:
            line["amount"] = _money(p["amount"], f"payment[{i}].amount")
        out.append(line)
    return out


def _comments(body: dict) -> dict[str, Any]:
    out = {}
    for line in "ABCDEFGH":
        value = body.get(f"cmt{line.lower()}")
        if _present(value):
            out[line] = value
    return out


def _reference(body: dict, invoice_type: Any) -> dict[str, Any] | None:
    """For FA/EA: the original's code DEF/DGI, as receipts print it (groups of 4 with "-" or
    spaces are accepted), and the nature (referenceType). referenceDesc goes to a comment line."""
    code = body.get("reference")
    if not _present(code):
        return None
    if isinstance(code, str):
        code = re.sub(r"[\s-]", "", code).upper()
    nature = _upper(body.get("referenceType"))
    if invoice_type in CREDIT_TYPES and not _present(nature):
        raise EmcfError(INVALID_INVOICE, "referenceType: a credit note needs the nature of its reference "
                                         "(" + ", ".join(t["type"] for t in REFERENCE_TYPES) + ")")
    desc = body.get("referenceDesc")
    if _present(desc):
        if _present(body.get(f"cmt{REFERENCE_DESC_LINE.lower()}")):
            raise EmcfError(INVALID_INVOICE, f"referenceDesc is printed on comment line {REFERENCE_DESC_LINE}, "
                                             f"which cmt{REFERENCE_DESC_LINE.lower()} already uses")
    return {"nature": nature, "code": code}


def _usd_rate(body: dict) -> dict[str, Any] | None:
    code = _upper(body.get("curCode"))
    if not _present(code) or code == "CDF":
        return None
    if code != "USD":
        raise EmcfError(INVALID_INVOICE, f"curCode: {code!r}: only USD (with curRate) or CDF")
    rate = number(body.get("curRate"), "curRate")
    when = body.get("curDate")
    if not isinstance(when, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([ T].*)?", when.strip()):
        raise EmcfError(INVALID_INVOICE, "curDate: the rate's date, written YYYY-MM-DD[ hh:mm:ss]")
    return {"rate": fmt2(rate), "date": when.strip()[:10]}


# Our field names → the e-MCF names, to word validation messages in the client's terms.
_FIELD_NAMES = {
    "unit_price": "price", "tax_group": "taxGroup", "original_price": "originalPrice",
    "price_change": "priceModification", "specific_tax": "taxSpecificValue", "per_unit": "",
    "invoice_number": "rn", "price_mode": "mode", "payments": "payment", "method": "name",
    "usd_rate": "curRate", "phone": "contact", "email": "contact", "pos_terminal_id": "token name",
}


def field_name(path: str) -> str:
    """'items[0].unit_price' → 'items[0].price'; 'reference.code' → 'reference'."""
    if path == "reference.code":
        return "reference"
    if path == "reference.nature":
        return "referenceType"
    if path.startswith("comments."):
        return "cmt" + path.split(".", 1)[1].lower()
    parts = []
    for part in path.split("."):
        name, bracket, rest = part.partition("[")
        name = _FIELD_NAMES.get(name, name)
        if name or bracket:
            parts.append(name + bracket + rest)
    return ".".join(parts) or "body"


def describe(detail: str, errors: list[dict[str, Any]] | None) -> str:
    """One errorDesc from a validation refusal: each field (in e-MCF names) and its message."""
    if not errors:
        return detail
    shown = [f"{field_name(str(e.get('field', 'body')))}: {e.get('message')}" for e in errors[:10]]
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(shown) + more


# ------------------------------------------------------------------------------ the answers
def phase1_answer(uid: str, totals: dict[str, Any], rates: dict[str, Decimal]) -> dict[str, Any]:
    """{uid, ta..tp (rates), taa..tap (TTC per group), haa..hap (HT), vaa..vap (VAT), ts, total,
    vtotal}: the Benin-style names, for every group of the day's table (zero when unused)."""
    by_group = totals["by_group"]
    answer: dict[str, Any] = {"uid": uid}
    zero = Decimal("0.00")
    groups = [g for g in TAX_GROUPS if g in rates]
    for g in groups:
        answer[f"t{g.lower()}"] = rates[g]
    for prefix, key in (("ta", "total"), ("ha", "ht"), ("va", "vat")):
        for g in groups:
            answer[f"{prefix}{g.lower()}"] = Decimal(by_group[g][key]) if g in by_group else zero
    answer["ts"] = Decimal(totals["specific_tax"])
    answer["total"] = Decimal(totals["total"])
    answer["vtotal"] = Decimal(totals["vat"])
    return answer


def confirm_totals(body: Any) -> tuple[Decimal, Decimal]:
    """{total, vtotal} of a confirm, to the cent."""
    if not isinstance(body, dict):
        raise EmcfError(BAD_BODY, "the confirm body is {total, vtotal}")
    return number(body.get("total"), "total"), number(body.get("vtotal"), "vtotal")


def confirm_answer(invoice: dict[str, Any]) -> dict[str, Any]:
    """{dateTime, qrCode, codeDEFDGI, counters, nim} of a sealed invoice, whichever signer sealed it."""
    sec = invoice["security"]
    return {"dateTime": sec["timestamp"], "qrCode": sec["qr_payload"], "codeDEFDGI": sec["code"],
            "counters": sec["counters"]["label"], "nim": sec["authority_id"]}
