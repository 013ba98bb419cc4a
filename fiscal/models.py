"""The canonical invoice model, shared by the agent and the cloud.

Strict on purpose: unknown fields are rejected (not ignored), money and quantities are decimal
strings, enumerations are closed. What goes into a sealed invoice is exactly what these models
serialize, and their canonical bytes (RFC 8785, see `canonical.py`) are what gets signed and
chained.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from .money import fmt2, fmt_qty, parse_amount, parse_quantity, parse_rate

Money = Annotated[
    Decimal,
    BeforeValidator(parse_amount),
    PlainSerializer(fmt2, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$", "examples": ["930.00"]}),
]
Quantity = Annotated[
    Decimal,
    BeforeValidator(parse_quantity),
    PlainSerializer(fmt_qty, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,3})?$", "examples": ["2", "2.5"]}),
]
Rate = Annotated[
    Decimal,
    BeforeValidator(parse_rate),
    PlainSerializer(lambda d: format(d.normalize(), "f") if d == d.to_integral() else format(d, "f"), return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,4})?$", "examples": ["10"]}),
]


# Control characters have no business on a printed receipt and some are framing bytes on the
# device link (SOH, ETX, AMB...). \r and \n are not allowed in one-line fields either.
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f]")


def text(max_length: int, min_length: int = 1):
    """A free-text field as a sealed invoice holds it. Requests use `request_text`, stricter."""
    return Annotated[
        str,
        Field(min_length=min_length, max_length=max_length),
        BeforeValidator(_text_value),
    ]


def _text_value(value: object) -> object:
    """A string without control characters (`_CONTROL_CHAR`), else "must be a string"."""
    if isinstance(value, str):
        found = _CONTROL_CHAR.search(value)
        if found is not None:
            raise ValueError(f"control character U+{ord(found.group()):04X} is not allowed")
        return value
    raise ValueError("must be a string")


# What a POS may not send in free text (see docs/api.md, "Text fields"), beyond the control
# characters above: the other control characters (C1, U+0080-U+009F, NEL among them), the
# line and paragraph separators (U+2028, U+2029), the bidirectional formatting characters
# (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and the zero-width ones (U+200B-U+200D,
# U+2060, U+FEFF). They print as nothing, as a line break, or reorder what prints around them: a
# receipt could then read differently from the data that was sealed ("TOTAL 100" shown as
# "TOTAL 001"; two names that look the same but are not). Only requests are checked: a sealed
# invoice stays readable whatever an older agent accepted.
_REFUSED_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2028\u2029"
                           "\u2060\u2066-\u2069\ufeff]")


# The same rule for the OpenAPI document (ECMA-262 syntax); the check itself is `_REFUSED_CHAR`.
_REQUEST_TEXT_PATTERN = ("^[^\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200b-\\u200f\\u202a-\\u202e\\u2028\\u2029"
                         "\\u2060\\u2066-\\u2069\\ufeff]*$")


def request_text(max_length: int, min_length: int = 1):
    """A free-text field of a request: as `text`, and none of the characters of `_REFUSED_CHAR`."""
    return Annotated[
        str,
        Field(min_length=min_length, max_length=max_length, json_schema_extra={"pattern": _REQUEST_TEXT_PATTERN}),
        BeforeValidator(_request_text_value),
    ]


def _request_text_value(value: object) -> object:
    if isinstance(value, str):
        found = _REFUSED_CHAR.search(value)
        if found is not None:
            char = found.group()
            if char <= "\x1f" or "\x7f" <= char <= "\x9f":
                raise ValueError(f"control character U+{ord(char):04X} is not allowed")
            raise ValueError(f"U+{ord(char):04X} ({unicodedata.name(char, 'FORMAT CHARACTER')}) is not allowed: "
                             "an invisible, line-breaking or bidirectional formatting character")
        return value
    raise ValueError("must be a string")


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: object) -> object:
    """A date written YYYY-MM-DD. Pydantic's lax mode would also take 0 or 1700000000 (seconds
    since 1970) and turn them into dates; a date object passes (callers in Python)."""
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date") from None
    if type(value) is date:
        return value
    raise ValueError("must be a date written YYYY-MM-DD, as a string")


IsoDate = Annotated[date, BeforeValidator(_iso_date)]


InvoiceType = Literal["FV", "FT", "EV", "ET", "FA", "EA"]
CREDIT_TYPES = frozenset({"FA", "EA"})
ClientType = Literal["PP", "PM", "PC", "PL", "AO"]
ItemType = Literal["BIE", "SER", "TAX"]
TaxGroup = Literal["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P"]
TAX_GROUPS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOP")
PaymentMethod = Literal["E", "V", "C", "M", "D", "A"]
PAYMENT_ALIASES = {"cash": "E", "transfer": "V", "card": "C", "mobile_money": "M", "cheque": "D", "other": "A"}
SignerMode = Literal["device", "cloud", "delegated"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, populate_by_name=True)


class Operator(Strict):
    id: text(16)
    name: text(32)


class Client(Strict):
    type: ClientType = "PP"
    nif: text(32) | None = None
    name: text(128) | None = None
    address: text(128) | None = None
    phone: text(32) | None = None
    email: text(128) | None = None
    rccm: text(64) | None = None


class RequestOperator(Operator):
    id: request_text(16)
    name: request_text(32)


class RequestClient(Client):
    nif: request_text(32) | None = None
    name: request_text(128) | None = None
    address: request_text(128) | None = None
    phone: request_text(32) | None = None
    email: request_text(128) | None = None
    rccm: request_text(64) | None = None


class SpecificTax(Strict):
    """A specific tax (T.S.) that enters the VAT base: an amount per unit or a percentage."""

    per_unit: Money | None = None
    percent: Rate | None = None
    description: text(16) | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "SpecificTax":
        if (self.per_unit is None) == (self.percent is None):
            raise ValueError("give exactly one of per_unit or percent")
        if self.per_unit is not None and self.per_unit <= 0:
            raise ValueError("per_unit must be greater than zero")
        if self.percent is not None and not (0 < self.percent <= 100):
            raise ValueError("percent must be in (0, 100]")
        return self


class RequestSpecificTax(SpecificTax):
    description: request_text(16) | None = None


class Item(Strict):
    name: text(64)
    code: text(24) | None = None
    type: ItemType
    tax_group: TaxGroup
    unit_price: Money
    quantity: Quantity = Decimal("1")
    specific_tax: SpecificTax | None = None
    original_price: Money | None = None
    price_change: text(24) | None = None

    @field_validator("unit_price")
    @classmethod
    def _positive_price(cls, v: Decimal) -> Decimal:
        if v <= 0:
            raise ValueError("unit_price must be greater than zero")
        return v

    @field_validator("quantity")
    @classmethod
    def _positive_qty(cls, v: Decimal) -> Decimal:
        if v <= 0:
            raise ValueError("quantity must be greater than zero")
        return v

    @model_validator(mode="after")
    def _price_change_pair(self) -> "Item":
        if (self.original_price is None) != (self.price_change is None):
            raise ValueError("original_price and price_change go together")
        if self.original_price is not None and self.original_price <= 0:
            raise ValueError("original_price must be greater than zero")
        return self


class RequestItem(Item):
    """An item as a POS sends it: the sealed form (`Item`), with free text checked as requests are."""

    name: request_text(64)
    code: request_text(24) | None = None
    specific_tax: RequestSpecificTax | None = None
    price_change: request_text(24) | None = None


class Payment(Strict):
    method: PaymentMethod
    amount: Money | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _alias(cls, v: object) -> object:
        if isinstance(v, str):
            return PAYMENT_ALIASES.get(v, v)
        return v

    @field_validator("amount")
    @classmethod
    def _positive(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v <= 0:
            raise ValueError("amount must be greater than zero")
        return v


class Reference(Strict):
    """What a credit note (FA/EA) refers to: its nature and the 24-char code of the original."""

    nature: Literal["COR", "RAN", "RAM", "RRR"]
    code: Annotated[str, Field(min_length=24, max_length=24, pattern=r"^[A-Z0-9]{24}$")]


class UsdRate(Strict):
    rate: Annotated[Decimal, BeforeValidator(parse_amount), PlainSerializer(fmt2, return_type=str),
                    Field(json_schema_extra={"type": "string", "examples": ["2850.00"]})]
    date: IsoDate

    @field_validator("rate")
    @classmethod
    def _positive(cls, v: Decimal) -> Decimal:
        if v <= 0:
            raise ValueError("rate must be greater than zero")
        return v


CommentLine = Literal["A", "B", "C", "D", "E", "F", "G", "H"]

MAX_ITEMS = 500


class InvoiceRequest(Strict):
    """What a POS submits to `POST /v1/invoices`."""

    request_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E]+$")]
    type: InvoiceType
    price_mode: Literal["TTC", "HT"] = "TTC"
    invoice_number: request_text(64)
    pos_terminal_id: request_text(32)
    operator: RequestOperator
    client: RequestClient | None = None
    # max_length is enforced in the API layer too, so 501 items get a precise 422.
    items: Annotated[list[RequestItem], Field(min_length=1, max_length=MAX_ITEMS)]
    # Factories, not `= []` / `= {}`: pydantic deep-copies a mutable default at every validation
    # (≈ 20 µs of each seal, for an empty dict). The schema still shows the default.
    payments: Annotated[list[Payment], Field(default_factory=list, max_length=16, json_schema_extra={"default": []})]
    comments: Annotated[dict[CommentLine, request_text(255)], Field(default_factory=dict,
                                                                   json_schema_extra={"default": {}})]
    reference: Reference | None = None
    usd_rate: UsdRate | None = None

    @model_validator(mode="after")
    def _credit_note_reference(self) -> "InvoiceRequest":
        if self.type in CREDIT_TYPES and self.reference is None:
            raise ValueError(f"a credit note ({self.type}) needs a reference to the original invoice")
        if self.type not in CREDIT_TYPES and self.reference is not None:
            raise ValueError(f"reference is only for credit notes (FA, EA), not {self.type}")
        return self


class SealedRequest(InvoiceRequest):
    """The request a sealed invoice carries, as the cloud recomputes it: the same rules for
    amounts, but its free text is taken as its agent accepted it (the character rule of
    `request_text` is for new requests only; a sealed invoice is a fiscal fact)."""

    invoice_number: text(64)
    pos_terminal_id: text(32)
    operator: Operator
    client: Client | None = None
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS)]
    comments: dict[CommentLine, text(255)] = {}


# ---------------------------------------------------------------------------------------------
# Computed and sealed forms


class GroupTotal(Strict):
    rate: Money  # percent, two decimals ("16.00")
    total: Money  # TTC of the group, specific taxes included
    ht: Money
    vat: Money


class LineAmounts(Strict):
    """The amounts of one item, as the device's 31h answer gives them (MV, MH, MT, TS)."""

    total: Money
    ht: Money
    vat: Money
    specific_tax: Money


class PaymentLine(Strict):
    method: PaymentMethod
    amount: Money


class Totals(Strict):
    total: Money
    vat: Money
    specific_tax: Money
    usd_equivalent: Money | None = None
    by_group: dict[TaxGroup, GroupTotal]
    payments: list[PaymentLine]
    paid: Money
    change: Money


class Counters(Strict):
    type: int
    total: int
    label: str


class Security(Strict):
    authority_id: str
    code: str
    counters: Counters
    fiscal_number: int
    timestamp: str
    qr_payload: str
    signature: str | None = None


class Chain(Strict):
    prev_hash: str
    hash: str


class SyncInfo(Strict):
    state: Literal["pending", "accepted", "duplicate", "rejected", "quarantined"] = "pending"
    reason: str | None = None


class SealedInvoice(Strict):
    """A sealed invoice as stored and returned. `chain.hash` covers everything but `sync`."""

    id: str
    request_id: str
    status: Literal["sealed"] = "sealed"
    mode: SignerMode
    type: InvoiceType
    price_mode: Literal["TTC", "HT"]
    invoice_number: str
    merchant_nif: str
    outlet_id: str
    isf: str
    pos_terminal_id: str
    operator: Operator
    client: Client | None = None
    items: list[Item]
    lines: list[LineAmounts]
    comments: dict[CommentLine, str] = {}
    reference: Reference | None = None
    usd_rate: UsdRate | None = None
    totals: Totals
    security: Security
    chain: Chain
    sync: SyncInfo = SyncInfo()
