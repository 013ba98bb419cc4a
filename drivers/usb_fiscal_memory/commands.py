"""Typed requests and answers for the ten commands of "Protocole MCF-SFE" v1.0 (§4.4).

Each request knows its code (``CMD``), its DATA (``data()``) and how to read its answer
(``parse(data, status)``). ``parse`` returns the typed answer, or a ``DeviceError`` *value* when
the MCF answered ``E:...``; answers that do not follow the document raise ``ResponseParseError``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import ClassVar, Protocol, TypeVar

from .errors import DeviceError, ResponseParseError
from .fields import (
    InvalidRequest,
    clean_text,
    fmt_amount,
    fmt_date,
    fmt_fixed2,
    parse_decimal,
    parse_dt,
    parse_int,
    truncate_chars,
    truncate_escaped_bytes,
)
from .framing import MAX_DATA, Status, escape_param, join_fields, split_fields, unescape_param

# Command codes (§4.1)
CMD_STATUS = 0xC1
CMD_SERVER_LINK = 0xC2
CMD_TAXPAYER = 0x2B
CMD_CLIENT = 0xC3
CMD_OPEN = 0xC0
CMD_ITEM = 0x31
CMD_SUBTOTAL = 0x33
CMD_PAYMENT = 0x35
CMD_COMMENT = 0x36
CMD_NORMALIZE = 0x38

TAX_GROUPS = tuple("ABCDEFGHIJKLMNOP")
SALE_TYPES = ("FV", "FT", "EV", "ET")
CREDIT_TYPES = ("FA", "EA")
CREDIT_REASONS = ("COR", "RAN", "RAM", "RRR")
CLIENT_TYPES = ("PP", "PM", "PC", "PL", "AO")
PRICE_MODES = ("TTC", "HT")
ITEM_TYPES = ("BIE", "SER", "TAX")
PAYMENT_METHODS = ("E", "V", "C", "M", "D", "A")
COMMENT_LINES = tuple("ABCDEFGH")
TAXPAYER_FIELDS = ("I0", "I1", "I2", "I3", "I4")

T = TypeVar("T", covariant=True)


class Request(Protocol[T]):
    """What every command below provides."""

    CMD: ClassVar[int]

    def data(self) -> bytes: ...

    def parse(self, data: bytes, status: Status | None = None) -> T | DeviceError: ...


def _text(data: bytes) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResponseParseError(f"answer is not valid UTF-8: {exc}") from exc


def _error(cmd: int, text: str, status: Status | None) -> DeviceError | None:
    """``E:{ER}``, a bare ``E`` (C3h ``{RC}[:{ER}]``) or ``E E:{ER}`` (36h ``{RC}[ E:{ER}]``).

    A value that merely starts with "E " (a taxpayer called "E LECLERC") is not an error.
    """
    if text == "E" or text.startswith(("E:", "E E:")):
        message = text.removeprefix("E E:").removeprefix("E:").strip() if text != "E" else ""
        return DeviceError(cmd, unescape_param(message), status)
    return None


def _fields(data: bytes, count: int, cmd: int, *, at_least: bool = False) -> list[str]:
    fields = split_fields(data)
    if len(fields) < count or (not at_least and len(fields) > count):
        raise ResponseParseError(f"{cmd:02X}h answer has {len(fields)} fields, expected {count}")
    return fields


def _check_data(data: bytes, what: str) -> bytes:
    if len(data) > MAX_DATA:
        raise InvalidRequest(f"{what}: DATA is {len(data)} bytes after escaping, limit {MAX_DATA}")
    return data


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _identifier(value: str, limit: int, what: str) -> str:
    # Identifiers (FN, OPID, NIF...) are refused when too long: cutting them would change
    # which invoice or operator they name.
    if len(value) > limit:
        raise InvalidRequest(f"{what} is {len(value)} characters, limit {limit}")
    return value


# ------------------------------------------------------------------------------- C1h status
@dataclass(frozen=True)
class McfStatus:
    """C1h answer. Date-times are kept as sent (AAAAMMJJHHmmss); parsed views are properties."""

    mid: str  # machine id NID-ACNT
    nif: str
    dt: str  # the MCF's clock
    tc: int  # total transactions
    fvc: int  # sale invoices
    frc: int  # credit notes
    dfdt: str  # last invoice: date-time
    dft: str  # last invoice: type (FV, FA, FT, EV, EA, ET)
    dfs: str  # last invoice: DEF/DGI code (SIG)
    dfn: str  # last invoice: SFE invoice number (FN)
    dmv: Decimal | None  # last invoice: total TTC
    rates: dict[str, Decimal] = field(default_factory=dict)  # tax group A-P -> rate %

    @property
    def clock(self) -> datetime | None:
        return parse_dt(self.dt)

    @property
    def last_invoice_time(self) -> datetime | None:
        return parse_dt(self.dfdt)


@dataclass(frozen=True)
class ReadStatus:
    CMD: ClassVar[int] = CMD_STATUS

    def data(self) -> bytes:
        return b""

    def parse(self, data: bytes, status: Status | None = None) -> McfStatus | DeviceError:
        err = _error(self.CMD, _text(data), status)
        if err:
            return err
        # 11 fields + 16 rates; a manufacturer's extra trailing fields are ignored.
        f = _fields(data, 27, self.CMD, at_least=True)
        dmv = f[10].strip()
        return McfStatus(
            mid=f[0].strip(),
            nif=f[1].strip(),
            dt=f[2].strip(),
            tc=parse_int(f[3], "TC"),
            fvc=parse_int(f[4], "FVC"),
            frc=parse_int(f[5], "FRC"),
            dfdt=f[6].strip(),
            dft=f[7].strip(),
            dfs=f[8].strip(),
            dfn=f[9],
            dmv=parse_decimal(dmv, "DMV") if dmv else None,
            rates={g: parse_decimal(f[11 + i], f"TAX{g}") for i, g in enumerate(TAX_GROUPS)},
        )


# -------------------------------------------------------------------------- C2h server link
@dataclass(frozen=True)
class ServerLinkStatus:
    ec: int  # transactions sent to the DGI
    dc: int  # transactions held in the MCF
    dt: str  # last successful connection, AAAAMMJJHHmmss
    sta: str  # DIS | CON | TRA | RES
    er: str | None = None  # last error, manufacturer specific

    STATES: ClassVar[dict[str, str]] = {
        "DIS": "not connected",
        "CON": "connected, idle",
        "TRA": "sending data",
        "RES": "restarting",
    }

    @property
    def last_connection(self) -> datetime | None:
        return parse_dt(self.dt)

    def is_stale(self, now: datetime, max_age_days: float = 1.0) -> bool:
        """§4.4 C2h: the SFE must alert when the last connection is more than one day old."""
        last = self.last_connection
        return last is None or (now - last).total_seconds() > max_age_days * 86400


@dataclass(frozen=True)
class RestartAccepted:
    text: str


@dataclass(frozen=True)
class ReadServerLink:
    restart: bool = False
    CMD: ClassVar[int] = CMD_SERVER_LINK

    def data(self) -> bytes:
        return b"RESTART" if self.restart else b""

    def parse(
        self, data: bytes, status: Status | None = None
    ) -> ServerLinkStatus | RestartAccepted | DeviceError:
        text = _text(data)
        err = _error(self.CMD, text, status)
        if err:
            return err
        f = split_fields(data)
        if len(f) < 4:
            # The document does not show RESTART's answer; take whatever comes as an ack.
            if self.restart:
                return RestartAccepted(text)
            raise ResponseParseError(f"C2h answer has {len(f)} fields, expected 4 or 5")
        return ServerLinkStatus(
            ec=parse_int(f[0], "EC"),
            dc=parse_int(f[1], "DC"),
            dt=f[2].strip(),
            sta=f[3].strip(),
            er=",".join(f[4:]) if len(f) > 4 else None,
        )


# --------------------------------------------------------------------------- 2Bh taxpayer
TAXPAYER_LABELS = {"I0": "name", "I1": "address", "I2": "city", "I3": "phone", "I4": "email"}


@dataclass(frozen=True)
class ReadTaxpayerInfo:
    opt: str
    CMD: ClassVar[int] = CMD_TAXPAYER

    def __post_init__(self) -> None:
        _choice(self.opt, TAXPAYER_FIELDS, "OPT")

    def data(self) -> bytes:
        return self.opt.encode("ascii")

    def parse(self, data: bytes, status: Status | None = None) -> str | DeviceError:
        text = _text(data)
        err = _error(self.CMD, text, status)
        return err if err else unescape_param(text)


# ------------------------------------------------------------------------------ C3h client
@dataclass(frozen=True)
class ClientInfo:
    """The buyer. ``ClientInfo()`` alone is an anonymous natural person (PP)."""

    ctype: str = "PP"
    cnif: str = ""
    cnom: str = ""
    cadd: str = ""
    ctel: str = ""
    ceml: str = ""
    crccm: str = ""

    def __post_init__(self) -> None:
        _choice(self.ctype, CLIENT_TYPES, "CTYPE")

    @property
    def is_anonymous(self) -> bool:
        return self == ClientInfo()


@dataclass(frozen=True)
class SetClient:
    """C3h. ``client=None`` sends no data (the document's "no information": type PP)."""

    client: ClientInfo | None = None
    CMD: ClassVar[int] = CMD_CLIENT

    def data(self) -> bytes:
        c = self.client
        if c is None:
            return b""
        fields = [c.ctype, c.cnif, c.cnom, c.cadd, c.ctel, c.ceml, c.crccm]
        return _check_data(join_fields([clean_text(x) for x in fields]), "C3h")

    def parse(self, data: bytes, status: Status | None = None) -> None | DeviceError:
        text = _text(data).strip()
        err = _error(self.CMD, text, status)
        if err:
            return err
        if text.startswith("R"):
            return None
        raise ResponseParseError(f"C3h answer {text!r} is neither R nor E")


# ------------------------------------------------------------------------ C0h open invoice
@dataclass(frozen=True)
class InvoiceOpened:
    fc: int  # counter for this invoice type
    tc: int  # total counter
    cnif: str = ""
    cnom: str = ""
    cadd: str = ""
    ctel: str = ""
    ceml: str = ""
    crccm: str = ""


@dataclass(frozen=True)
class OpenInvoice:
    """C0h, sale (FV/FT/EV/ET) or credit note (FA/EA with RR and RN)."""

    opid: str
    opn: str
    nif: str
    invoice_type: str
    pmode: str
    isf: str
    fn: str
    credit_reason: str | None = None  # RR: COR | RAN | RAM | RRR
    credit_ref: str | None = None  # RN: reference of the original invoice
    crt: Decimal | None = None  # USD exchange rate
    cdt: date | None = None  # date of that rate
    CMD: ClassVar[int] = CMD_OPEN

    def __post_init__(self) -> None:
        _choice(self.invoice_type, SALE_TYPES + CREDIT_TYPES, "invoice type")
        _choice(self.pmode, PRICE_MODES, "PMODE")
        _identifier(self.opid, 16, "OPID")
        _identifier(self.fn, 64, "FN")
        if not self.fn:
            raise InvalidRequest("FN is required")
        if self.invoice_type in CREDIT_TYPES:
            _choice(self.credit_reason or "", CREDIT_REASONS, "RR (credit note reason)")
            if not self.credit_ref:
                raise InvalidRequest("RN (original invoice reference) is required for a credit note")
        elif self.credit_reason or self.credit_ref:
            raise InvalidRequest("RR/RN only apply to credit notes (FA, EA)")
        if (self.crt is None) != (self.cdt is None):
            raise InvalidRequest("CRT and CDT go together")

    @property
    def is_credit_note(self) -> bool:
        return self.invoice_type in CREDIT_TYPES

    def data(self) -> bytes:
        fields = [self.opid, truncate_chars(clean_text(self.opn), 32), self.nif, self.invoice_type]
        if self.is_credit_note:
            fields += [self.credit_reason or "", self.credit_ref or ""]
        fields += [self.pmode, self.isf, self.fn]
        if self.crt is not None and self.cdt is not None:
            fields += [fmt_amount(self.crt, "CRT", max_places=6), fmt_date(self.cdt)]
        return _check_data(join_fields(fields), "C0h")

    def parse(self, data: bytes, status: Status | None = None) -> InvoiceOpened | DeviceError:
        err = _error(self.CMD, _text(data), status)
        if err:
            return err
        f = split_fields(data)
        # The table and examples 1-3 give 8 fields, example 4 gives 7 (ambiguity 3): the
        # missing one is taken as an empty CRCCM.
        if len(f) not in (7, 8):
            raise ResponseParseError(f"C0h answer has {len(f)} fields, expected 8 (or 7)")
        f = f + [""] * (8 - len(f))
        return InvoiceOpened(parse_int(f[0], "FC"), parse_int(f[1], "TC"), *f[2:8])


# ------------------------------------------------------------------------------- 31h item
@dataclass(frozen=True)
class SpecificTax:
    """T.S.: ``rate`` per unit (amount) or a percentage (``percent=True``); ``total`` overall."""

    rate: Decimal
    total: Decimal
    percent: bool = False
    desc: str | None = None


@dataclass(frozen=True)
class ItemRegistered:
    mv: Decimal  # total with VAT and specific tax
    mh: Decimal  # total excluding VAT and specific tax
    mt: Decimal  # VAT
    ts: Decimal  # specific tax


@dataclass(frozen=True)
class AddItem:
    """31h: ``{NOM}[LF{DESC}]TAB{ITYPE},{TAX}{TR}%{MON}TAB{PR}[*{QT}][;T{TSR},{TS}[,{TSDESC}]]
    [TAB{PRORIG},{PRDESC}]``.

    Free text is cut to the document's limits (NOM 64 bytes as sent, DESC 24, TSDESC 16,
    PRDESC 24 characters) rather than refused: a long product name must not block a sale.
    """

    name: str
    item_type: str
    tax_group: str
    tax_rate: Decimal
    amount: Decimal  # MON: line total (HT or TTC per C0h PMODE)
    price: Decimal  # PR: unit price without specific tax
    quantity: Decimal | None = None  # QT, omitted -> 1
    desc: str | None = None  # internal code
    specific_tax: SpecificTax | None = None
    original_price: Decimal | None = None  # PRORIG
    price_change_desc: str | None = None  # PRDESC
    CMD: ClassVar[int] = CMD_ITEM

    def __post_init__(self) -> None:
        _choice(self.item_type, ITEM_TYPES, "ITYPE")
        _choice(self.tax_group, TAX_GROUPS, "tax group")
        if (self.original_price is None) != (self.price_change_desc is None):
            raise InvalidRequest("PRORIG and PRDESC go together")

    def data(self) -> bytes:
        name = truncate_escaped_bytes(clean_text(self.name), 64)
        parts = [escape_param(name)]
        if self.desc:
            parts += ["\n", escape_param(truncate_chars(clean_text(self.desc), 24))]
        parts += [
            "\t",
            self.item_type,
            ",",
            self.tax_group,
            fmt_fixed2(self.tax_rate, "TR"),
            "%",
            fmt_amount(self.amount, "MON"),
            "\t",
            fmt_amount(self.price, "PR"),
        ]
        if self.quantity is not None:
            parts += ["*", fmt_amount(self.quantity, "QT", max_places=3)]
        ts = self.specific_tax
        if ts is not None:
            rate = fmt_amount(ts.rate, "TSR") + ("%" if ts.percent else "")
            parts += [";T", rate, ",", fmt_amount(ts.total, "TS")]
            if ts.desc:
                parts += [",", escape_param(truncate_chars(clean_text(ts.desc), 16))]
        if self.original_price is not None:
            prdesc = truncate_chars(clean_text(self.price_change_desc or ""), 24)
            parts += ["\t", fmt_amount(self.original_price, "PRORIG"), ",", escape_param(prdesc)]
        return _check_data("".join(parts).encode("utf-8"), "31h")

    def parse(self, data: bytes, status: Status | None = None) -> ItemRegistered | DeviceError:
        err = _error(self.CMD, _text(data), status)
        if err:
            return err
        f = _fields(data, 4, self.CMD)
        return ItemRegistered(*(parse_decimal(x, n) for x, n in zip(f, ("MV", "MH", "MT", "TS"))))


# --------------------------------------------------------------------------- 33h subtotal
@dataclass(frozen=True)
class SubtotalResult:
    mv: Decimal  # total registered
    mv_groups: dict[str, Decimal]  # MVA..MVP (with VAT and specific tax)
    mt_groups: dict[str, Decimal]  # MTA..MTP (VAT)
    mts: Decimal  # specific tax total
    mcur: Decimal  # USD equivalent, 0 when no rate was given

    @property
    def mt(self) -> Decimal:
        """Total VAT: what 38h expects as MT."""
        return sum(self.mt_groups.values(), Decimal(0))


@dataclass(frozen=True)
class Subtotal:
    CMD: ClassVar[int] = CMD_SUBTOTAL

    def data(self) -> bytes:
        return b""

    def parse(self, data: bytes, status: Status | None = None) -> SubtotalResult | DeviceError:
        err = _error(self.CMD, _text(data).strip(), status)
        if err:
            return err
        f = _fields(data, 35, self.CMD)
        n = [parse_decimal(x, "33h field") for x in f]
        return SubtotalResult(
            mv=n[0],
            mv_groups=dict(zip(TAX_GROUPS, n[1:17])),
            mt_groups=dict(zip(TAX_GROUPS, n[17:33])),
            mts=n[33],
            mcur=n[34],
        )


# ---------------------------------------------------------------------------- 35h payment
@dataclass(frozen=True)
class PaymentRegistered:
    """MP = payments so far - invoice total: negative is still due, positive is change."""

    mp: Decimal

    @property
    def due(self) -> Decimal:
        return max(-self.mp, Decimal(0))

    @property
    def change(self) -> Decimal:
        return max(self.mp, Decimal(0))


@dataclass(frozen=True)
class AddPayment:
    """35h: no data (cash for the rest), a method alone (the rest), or method + amount."""

    method: str | None = None
    amount: Decimal | None = None
    CMD: ClassVar[int] = CMD_PAYMENT

    def __post_init__(self) -> None:
        if self.method is None and self.amount is not None:
            raise InvalidRequest("a payment amount needs a method")
        if self.method is not None:
            _choice(self.method, PAYMENT_METHODS, "payment method")

    def data(self) -> bytes:
        if self.method is None:
            return b""
        amount = "" if self.amount is None else fmt_amount(self.amount, "payment")
        return (self.method + amount).encode("ascii")

    def parse(self, data: bytes, status: Status | None = None) -> PaymentRegistered | DeviceError:
        text = _text(data).strip()
        err = _error(self.CMD, text, status)
        if err:
            return err
        if not text.startswith("R"):
            raise ResponseParseError(f"35h answer {text!r} is neither R nor E")
        return PaymentRegistered(parse_decimal(text[1:] or "0", "MP"))


# ---------------------------------------------------------------------------- 36h comments
@dataclass(frozen=True)
class Comment:
    """36h: read line ``line`` (content None) or write it (at most 255 characters)."""

    line: str
    content: str | None = None
    CMD: ClassVar[int] = CMD_COMMENT

    def __post_init__(self) -> None:
        _choice(self.line, COMMENT_LINES, "comment line")

    def data(self) -> bytes:
        if self.content is None:
            return self.line.encode("ascii")
        text = truncate_chars(clean_text(self.content), 255)
        # 255 characters cannot all fit in a 200-byte DATA: cut to what the frame carries.
        text = truncate_escaped_bytes(text, MAX_DATA - 2)
        return join_fields([self.line, text])

    def parse(self, data: bytes, status: Status | None = None) -> str | None | DeviceError:
        """Read: the line's content. Write: None on ``R``."""
        text = _text(data)
        err = _error(self.CMD, text.strip(), status)
        if err:
            return err
        if self.content is None:
            return unescape_param(text)
        if text.strip().startswith("R"):
            return None
        raise ResponseParseError(f"36h answer {text!r} is neither R nor E")


# -------------------------------------------------------------------------- 38h normalize
SIG_PATTERN = re.compile(r"[A-Z0-9]{24}")


@dataclass(frozen=True)
class NormalizedInvoice:
    """The security elements, exactly as the MCF returned them."""

    fc: int
    tc: int
    ft: str
    dt: str  # AAAAMMJJHHmmss
    mid: str
    nif: str
    fn: str
    sig: str
    # False when FC was not returned by 38h but inferred from C1h's FVC/FRC, which count all
    # sale types (FV FT EV ET) resp. both credit types together: see MCFClient.recover_last.
    fc_exact: bool = field(default=True, compare=False)

    @property
    def qr_payload(self) -> str:
        return qr_payload(self.mid, self.sig, self.nif, self.dt)

    @property
    def counters(self) -> str:
        """``FC/TC FT`` as printed under "DEF Compteurs"."""
        return f"{self.fc}/{self.tc} {self.ft}"


def qr_payload(mid: str, sig: str, nif: str, dt: str) -> str:
    """Chapter 5: ``RDCDEF01;{MID};{SIG};{NIF};{DT}``."""
    return f"RDCDEF01;{mid};{sig};{nif};{dt}"


@dataclass(frozen=True)
class Pending:
    """``P:`` -- the MCF needs more time (e.g. a credit note checked with the DGI server)."""

    mid: str
    nif: str
    fn: str
    what: str  # "C" or the MV that was sent
    reason: str


@dataclass(frozen=True)
class Cancelled:
    text: str  # the device's words, e.g. "ANNULEE"


def _parse_normalized(fields: list[str], table_form: bool, fn: str | None) -> NormalizedInvoice:
    fc, tc, ft, dt, mid, nif, x, y = fields
    # Ambiguity 2: the table puts FN before SIG, the example SIG before FN. The FN we sent
    # decides; without it, the "R:" prefix (table) or its absence (example) does.
    if fn is not None and (x == fn) != (y == fn):
        sig_first = y == fn
    else:
        sig_first = not table_form
    sig, number = (x, y) if sig_first else (y, x)
    return NormalizedInvoice(
        parse_int(fc, "FC"), parse_int(tc, "TC"), ft.strip(), dt.strip(),
        mid.strip(), nif.strip(), number, sig.strip(),
    )


def _parse_38h(
    data: bytes, cmd: int, status: Status | None, fn: str | None
) -> NormalizedInvoice | Pending | DeviceError:
    text = _text(data).strip()
    err = _error(cmd, text, status)
    if err:
        return err
    if text.startswith("P:"):
        f = split_fields(text[2:].encode("utf-8"))
        if len(f) < 5:
            raise ResponseParseError(f"38h P: answer has {len(f)} fields, expected 5")
        return Pending(f[0], f[1], f[2], f[3], ",".join(f[4:]))
    table_form = text.startswith("R:")
    body = text[2:] if table_form else text
    f = split_fields(body.encode("utf-8"))
    if len(f) != 8:
        raise ResponseParseError(f"38h answer has {len(f)} fields, expected 8")
    return _parse_normalized(f, table_form, fn)


@dataclass(frozen=True)
class Normalize:
    """38h ``{MV},{MT}``. ``fn`` (the FN of C0h) tells the two answer layouts apart."""

    mv: Decimal
    mt: Decimal
    fn: str | None = None
    CMD: ClassVar[int] = CMD_NORMALIZE

    def data(self) -> bytes:
        return f"{fmt_fixed2(self.mv, 'MV')},{fmt_fixed2(self.mt, 'MT')}".encode("ascii")

    def parse(
        self, data: bytes, status: Status | None = None
    ) -> NormalizedInvoice | Pending | DeviceError:
        return _parse_38h(data, self.CMD, status, self.fn)


@dataclass(frozen=True)
class CancelInvoice:
    """38h ``C``. The MCF confirms a cancellation with ``E:ANNULEE``, so E: is not a failure."""

    CMD: ClassVar[int] = CMD_NORMALIZE

    def data(self) -> bytes:
        return b"C"

    def parse(self, data: bytes, status: Status | None = None) -> Cancelled | Pending | DeviceError:
        text = _text(data).strip()
        if text.startswith("P:"):
            result = _parse_38h(data, self.CMD, status, None)
            if isinstance(result, Pending):
                return result
        err = _error(self.CMD, text, status)
        return Cancelled(err.text if err else text)

