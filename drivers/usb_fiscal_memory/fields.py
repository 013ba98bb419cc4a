"""Formatting and parsing of the values inside DATA: amounts, rates, dates, bounded text.

Money is ``Decimal`` (or ``int``), never ``float``. The document prints amounts two ways: 38h
sends ``2500.00`` while the 31h and 35h examples send ``380`` / ``C2400``. We therefore send an
amount with the scale the caller gave it (``Decimal("380")`` -> ``380``, ``Decimal("380.00")`` ->
``380.00``, at most 2 decimals), except where the document always shows two decimals (38h
amounts, tax rates), which are fixed at two.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from .errors import ResponseParseError
from .framing import escape_param

TWO_PLACES = Decimal("0.01")
DT_FORMAT = "%Y%m%d%H%M%S"  # AAAAMMJJHHmmss


class InvalidRequest(ValueError):
    """A request cannot be expressed in the protocol (bad code, too many decimals, too long)."""


def _as_decimal(value: Decimal | int, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise InvalidRequest(f"{what} must be Decimal or int, not {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise InvalidRequest(f"{what} must be finite")
    return result


def fmt_amount(value: Decimal | int, what: str = "amount", max_places: int = 2) -> str:
    """Plain notation at the caller's scale; more than ``max_places`` decimals is refused."""
    number = _as_decimal(value, what)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -max_places:
        if number != number.quantize(Decimal(1).scaleb(-max_places)):
            raise InvalidRequest(f"{what} {number} has more than {max_places} decimals")
        number = number.quantize(Decimal(1).scaleb(-max_places))
    if isinstance(exponent, int) and exponent > 0:
        number = number.quantize(Decimal(1))  # 4E+2 -> 400, never exponent notation on the wire
    return format(number, "f")


def fmt_fixed2(value: Decimal | int, what: str = "amount") -> str:
    """Exactly two decimals (``2500.00``, ``16.00``); a third significant decimal is refused."""
    number = _as_decimal(value, what)
    fixed = number.quantize(TWO_PLACES)
    if fixed != number:
        raise InvalidRequest(f"{what} {number} has more than 2 decimals")
    return format(fixed, "f")


def parse_decimal(text: str, what: str) -> Decimal:
    # The C1h example carries a stray space (", 0.00"): tolerate surrounding whitespace.
    try:
        number = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ResponseParseError(f"{what}: {text!r} is not a number") from exc
    if not number.is_finite():
        raise ResponseParseError(f"{what}: {text!r} is not a finite number")
    return number


def parse_int(text: str, what: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit():
        raise ResponseParseError(f"{what}: {text!r} is not a counter")
    return int(stripped)


def parse_dt(text: str) -> datetime | None:
    """AAAAMMJJHHmmss -> datetime (naive, the MCF's clock); empty or malformed -> None."""
    try:
        return datetime.strptime(text.strip(), DT_FORMAT)
    except ValueError:
        return None


def fmt_date(value: date) -> str:
    return value.strftime("%Y%m%d")  # AAAAMMJJ (C0h CDT)


def clean_text(text: str) -> str:
    """Control characters other than CR/LF become spaces.

    §4.2 only gives escapes for CR and LF, and TAB/LF are structural in 31h; any other byte
    below 20h is outside the range the frame tables allow.
    """
    return "".join(" " if (ord(c) < 0x20 and c not in "\r\n") or c == "\x7f" else c for c in text)


def truncate_chars(text: str, limit: int) -> str:
    return text[:limit]


def truncate_escaped_bytes(text: str, limit: int) -> str:
    """Longest prefix of ``text`` whose escaped UTF-8 form fits ``limit`` bytes.

    Byte limits ("64 octets") are measured on what travels, i.e. after escaping, which can
    never exceed the device's buffer whichever way it counts; cutting before escaping keeps
    escape sequences and multi-byte characters whole.
    """
    if len(escape_param(text).encode("utf-8")) <= limit:
        return text
    low, high = 0, len(text)
    while low < high:  # binary search on the prefix length
        mid = (low + high + 1) // 2
        if len(escape_param(text[:mid]).encode("utf-8")) <= limit:
            low = mid
        else:
            high = mid - 1
    return text[:low]
