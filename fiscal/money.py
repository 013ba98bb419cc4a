"""Decimal money and quantity handling.

Amounts travel as decimal *strings* (never floats) and are computed with `Decimal`. One rounding
rule everywhere: half away from zero to the cent (ROUND_HALF_UP), as the DGI examples do.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")
MILLI = Decimal("0.001")
# 15 integer digits is far beyond any invoice (10^15 CDF) and keeps totals clear of overflow.
MAX_AMOUNT = Decimal("999999999999999.99")

# Matched with fullmatch and [0-9]: `$` also matches before a trailing "\n" ("720.00\n"), and
# \d takes any script's digits ("٧٢٠.٠٠"), which Decimal() would then read as 720.00.
_MONEY_RE = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,2})?")
_QTY_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,3})?")
_RATE_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,4})?")


def q2(value: Decimal) -> Decimal:
    """Round to the cent, half away from zero."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def fmt2(value: Decimal) -> str:
    """The wire form of an amount: always two decimals (\"930.00\")."""
    if value.__class__ is Decimal:
        # Already in cents (exponent -2, the usual case): str() is the wire form. A str() with
        # "." third from the end is plain notation with two decimals (scientific notation ends in
        # an exponent); 20 characters keep it far from any precision limit of the rounding.
        text = str(value)
        if text[-3:-2] == "." and len(text) <= 20:
            return text
    return str(q2(value))


def fmt_qty(value: Decimal) -> str:
    """The wire form of a quantity: up to three decimals, no trailing zeros (\"2\", \"2.5\")."""
    if value.__class__ is Decimal:
        # The usual case: plain notation, at most three decimals, no trailing zero (as parsed from
        # "2" or "2.5"): str() already is the wire form.
        text = str(value)
        if len(text) <= 16:
            if text.isdigit():
                return text
            point = text.find(".")
            if (0 < point and len(text) - point <= 4 and text[-1] != "0"
                    and text[:point].isdigit() and text[point + 1:].isdigit()):
                return text
    text = format(value.quantize(MILLI, rounding=ROUND_HALF_UP).normalize(), "f")
    return text


def _parse(value: object, pattern: re.Pattern[str], what: str) -> Decimal:
    if isinstance(value, Decimal):
        value = format(value, "f")
    if isinstance(value, bool) or not isinstance(value, str):
        # Floats are refused on purpose: 0.1 + 0.2 has no place on a fiscal document.
        raise ValueError(f"{what} must be a decimal string such as \"930.00\", not {type(value).__name__}")
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a valid decimal string ({_HINT[what]})")
    try:
        return Decimal(value)
    except InvalidOperation as exc:  # pragma: no cover - regex already guards
        raise ValueError(f"{what} {value!r} is not a number") from exc


_HINT = {
    "amount": "at most 15 digits and 2 decimals",
    "quantity": "positive, at most 3 decimals",
    "rate": "at most 4 decimals",
}


# The common case (a str that matches) first; anything else goes through `_parse`, which gives
# the same result and every refusal with its message.
def parse_amount(value: object, _match=_MONEY_RE.fullmatch, _str=str, _dec=Decimal) -> Decimal:
    if value.__class__ is _str and _match(value):
        return _dec(value)
    return _parse(value, _MONEY_RE, "amount")


def parse_quantity(value: object, _match=_QTY_RE.fullmatch, _str=str, _dec=Decimal) -> Decimal:
    if value.__class__ is _str and _match(value):
        return _dec(value)
    return _parse(value, _QTY_RE, "quantity")


def parse_rate(value: object, _match=_RATE_RE.fullmatch, _str=str, _dec=Decimal) -> Decimal:
    if value.__class__ is _str and _match(value):
        return _dec(value)
    return _parse(value, _RATE_RE, "rate")
