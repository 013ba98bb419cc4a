"""The invoice being registered: client (C3h), header (C0h), items (31h), payments, comments.

Parsing of each command's DATA lives here beside the data it fills; every malformed field is a
``syntax`` refusal naming the field, so a driver author sees exactly what the device disliked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from drivers.usb_fiscal_memory.framing import unescape_param

from .amounts import (
    GROUPS,
    ZERO,
    InvoiceTotals,
    LineAmounts,
    SpecificTax,
    line_amounts,
    parse_decimal,
)
from .refusals import (
    ITEM_AMOUNT_INVALID,
    RATE_MISMATCH,
    SPECIFIC_TAX_INVALID,
    Refusal,
    syntax,
)
from .state import CREDIT_TYPES, SALE_TYPES

CLIENT_TYPES = ("PP", "PM", "PC", "PL", "AO")
CREDIT_NATURES = ("COR", "RAN", "RAM", "RRR")
PRICE_MODES = ("TTC", "HT")
ITEM_TYPES = ("BIE", "SER", "TAX")
PAYMENT_METHODS = "EVCMDA"
COMMENT_LINES = "ABCDEFGH"
MAX_COMMENT = 255
MAX_FN = 64
MAX_OPID = 16
MAX_OPN = 32
MAX_NAME_BYTES = 64
MAX_DESC = 24
MAX_TSDESC = 16
MAX_PRDESC = 24


def _decimal(text: str, what: str, places: int = 2) -> Decimal:
    try:
        return parse_decimal(text, places)
    except ValueError:
        raise syntax(f"{what} {text!r}") from None


# ------------------------------------------------------------------------------- C3h client
@dataclass(frozen=True)
class Client:
    ctype: str = "PP"
    nif: str = ""
    name: str = ""
    address: str = ""
    phone: str = ""
    email: str = ""
    rccm: str = ""

    @classmethod
    def parse(cls, fields: list[str]) -> "Client":
        """C3h DATA: nothing (type PP) or CTYPE,CNIF,CNOM,CADD,CTEL,CEML,CRCCM."""
        if fields == [""]:
            return cls()
        if len(fields) != 7:
            raise syntax(f"C3 attend 7 champs, recu {len(fields)}")
        if fields[0] not in CLIENT_TYPES:
            raise syntax(f"type de client {fields[0]!r}")
        return cls(*fields)

    def answer_fields(self) -> list[str]:
        """CNIF..CRCCM as C0h echoes them."""
        return [self.nif, self.name, self.address, self.phone, self.email, self.rccm]


# ------------------------------------------------------------------------------- C0h header
@dataclass(frozen=True)
class InvoiceHeader:
    opid: str
    opn: str
    nif: str
    ft: str
    rr: str
    rn: str
    ht_mode: bool
    isf: str
    fn: str
    usd_rate: Decimal | None
    usd_date: str

    @property
    def is_credit(self) -> bool:
        return self.ft in CREDIT_TYPES

    @classmethod
    def parse(cls, fields: list[str]) -> "InvoiceHeader":
        """OPID,OPN,NIF,{VT|RT,RR,RN},PMODE,ISF,FN[,CRT,CDT]."""
        if len(fields) < 4:
            raise syntax(f"C0 attend au moins 7 champs, recu {len(fields)}")
        ft = fields[3]
        if ft in CREDIT_TYPES:
            head, rr, rn, rest = fields[:4], fields[4:5], fields[5:6], fields[6:]
            if not rr or rr[0] not in CREDIT_NATURES:
                raise syntax(f"nature d'avoir {rr[0] if rr else ''!r}")
            if not rn or not rn[0]:
                raise syntax("reference de la facture d'origine manquante")
            rr_value, rn_value = rr[0], rn[0]
        elif ft in SALE_TYPES:
            head, rest = fields[:4], fields[4:]
            rr_value = rn_value = ""
        else:
            raise syntax(f"type de facture {ft!r}")
        if len(rest) not in (3, 5):
            raise syntax("PMODE,ISF,FN[,CRT,CDT] attendus")
        opid, opn, nif = head[0], head[1], head[2]
        pmode, isf, fn = rest[0], rest[1], rest[2]
        if not opid or len(opid) > MAX_OPID:
            raise syntax("OPID vide ou trop long")
        if len(opn) > MAX_OPN:
            raise syntax("OPN trop long")
        if pmode not in PRICE_MODES:
            raise syntax(f"mode de prix {pmode!r}")
        if not isf:
            raise syntax("ISF manquant")
        if not fn or len(fn) > MAX_FN:
            raise syntax("FN vide ou plus long que 64 caracteres")
        usd_rate, usd_date = None, ""
        if len(rest) == 5:
            usd_rate = _decimal(rest[3], "CRT", places=4)
            usd_date = rest[4]
            if usd_rate <= 0 or not re.fullmatch(r"\d{8}", usd_date):
                raise syntax("taux de change CRT/CDT")
        return cls(
            opid=opid,
            opn=opn,
            nif=nif,
            ft=ft,
            rr=rr_value,
            rn=rn_value,
            ht_mode=pmode == "HT",
            isf=isf,
            fn=fn,
            usd_rate=usd_rate,
            usd_date=usd_date,
        )


# -------------------------------------------------------------------------------- 31h items
_TAX_PART = re.compile(r"^(BIE|SER|TAX),([A-P])([0-9.]+)%([0-9.]+)$")
_PRICE_PART = re.compile(
    r"^(?P<pr>[0-9.]+)(?:\*(?P<qt>[0-9.]+))?"
    r"(?:;T(?P<tsr>[0-9.]+)(?P<pct>%)?,(?P<ts>[0-9.]+)(?:,(?P<tsdesc>[^,]*))?)?$"
)


@dataclass(frozen=True)
class Item:
    name: str
    desc: str
    itype: str
    group: str
    price: Decimal
    quantity: Decimal
    amounts: LineAmounts
    ts_desc: str = ""
    original_price: Decimal | None = None
    price_desc: str = ""


def parse_item(
    text: str, rates: dict[str, Decimal], ht_mode: bool, strict_amounts: bool = True
) -> Item:
    """31h DATA: NOM[LF DESC] TAB ITYPE,{TAX}{TR}%{MON} TAB PR[*QT][;T{TSR},{TS}[,{TSDESC}]]
    [TAB PRORIG,PRDESC]; amounts computed by the device, MON/TS checked against them."""
    parts = text.split("\t")
    if len(parts) not in (3, 4):
        raise syntax("31 attend 3 ou 4 parties separees par TAB")
    raw_name, _, raw_desc = parts[0].partition("\n")
    name, desc = unescape_param(raw_name), unescape_param(raw_desc)
    if not name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise syntax("NOM vide ou plus long que 64 octets")
    if len(desc) > MAX_DESC:
        raise syntax("DESC plus long que 24 caracteres")

    tax = _TAX_PART.match(parts[1])
    if tax is None:
        raise syntax(f"ITYPE,TAX TR%MON {parts[1]!r}")
    itype, group = tax.group(1), tax.group(2)
    declared_rate = _decimal(tax.group(3), "TR")
    declared_amount = _decimal(tax.group(4), "MON")
    if declared_rate != rates[group]:
        raise Refusal(RATE_MISMATCH.format(group=group))

    price_part = _PRICE_PART.match(parts[2])
    if price_part is None:
        raise syntax(f"PR*QT;T... {parts[2]!r}")
    price = _decimal(price_part["pr"], "PR")
    quantity = _decimal(price_part["qt"], "QT", places=3) if price_part["qt"] else Decimal(1)
    if quantity <= 0:
        raise syntax("QT doit etre positive")
    specific = None
    declared_ts = ZERO
    if price_part["tsr"] is not None:
        specific = SpecificTax(_decimal(price_part["tsr"], "TSR"), bool(price_part["pct"]))
        declared_ts = _decimal(price_part["ts"], "TS")
    ts_desc = unescape_param(price_part["tsdesc"] or "")
    if len(ts_desc) > MAX_TSDESC:
        raise syntax("TSDESC plus long que 16 caracteres")

    original_price, price_desc = None, ""
    if len(parts) == 4:
        raw_orig, sep, raw_pdesc = parts[3].partition(",")
        if not sep:
            raise syntax("PRORIG,PRDESC attendus")
        original_price = _decimal(raw_orig, "PRORIG")
        price_desc = unescape_param(raw_pdesc)
        if len(price_desc) > MAX_PRDESC:
            raise syntax("PRDESC plus long que 24 caracteres")

    amounts = line_amounts(price, quantity, rates[group], ht_mode, specific)
    if strict_amounts:
        # MON is the line in the invoice's price mode, specific tax included (examples 1-3, 5).
        if declared_amount != amounts.line + amounts.ts:
            raise Refusal(ITEM_AMOUNT_INVALID)
        if declared_ts != amounts.ts:
            raise Refusal(SPECIFIC_TAX_INVALID)
    return Item(
        name=name,
        desc=desc,
        itype=itype,
        group=group,
        price=price,
        quantity=quantity,
        amounts=amounts,
        ts_desc=ts_desc,
        original_price=original_price,
        price_desc=price_desc,
    )


# ------------------------------------------------------------------------- the open invoice
@dataclass
class OpenInvoice:
    header: InvoiceHeader
    client: Client
    totals: InvoiceTotals
    items: list[Item] = field(default_factory=list)
    payments: list[tuple[str, Decimal]] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)
    credit_check_started: float | None = None  # monotonic time of the first 38h (P: answers)

    @classmethod
    def start(
        cls, header: InvoiceHeader, client: Client, rates: dict[str, Decimal]
    ) -> "OpenInvoice":
        totals = InvoiceTotals(
            ht_mode=header.ht_mode, rates={g: rates[g] for g in GROUPS}, usd_rate=header.usd_rate
        )
        return cls(header=header, client=client, totals=totals)

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.totals.add(item.group, item.amounts)

    @property
    def paid(self) -> Decimal:
        return sum((amount for _, amount in self.payments), ZERO)


def parse_payment(text: str, remaining: Decimal) -> tuple[str, Decimal]:
    """35h DATA: nothing (cash, the remainder) or {PA}[{MT}] (no MT: the remainder)."""
    if text == "":
        return "E", remaining
    method, amount_text = text[0], text[1:]
    if method not in PAYMENT_METHODS:
        raise syntax(f"mode de paiement {method!r}")
    if amount_text == "":
        return method, remaining
    amount = _decimal(amount_text, "MT")
    if amount <= 0:
        raise syntax("le montant paye doit etre positif")
    return method, amount
