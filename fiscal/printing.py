"""How amounts, quantities, rates and times print on receipts and reports (DGI layout).

Amounts use the DGI example's convention: "." groups thousands (3.600, 4.064); cents, when there
are any, follow a "," (1.234,50); whole amounts print without decimals. Quantities likewise
(5, 2,5). The agent's receipts and reports and the cloud's reports print through these, so the
same invoice reads the same on the counter's roll and in the auditor's PDF.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from .money import q2

PAYMENT_NAMES = {"E": "ESPECES", "V": "VIREMENT", "C": "CARTE", "M": "MOBILE MONEY", "D": "CHEQUE",
                 "A": "AUTRE"}


def fmt_amount(value: Any) -> str:
    """`3600.00` → `3.600`; `1234.5` → `1.234,50`; negative amounts keep their sign."""
    d = q2(Decimal(str(value)))
    sign = "-" if d < 0 else ""
    d = abs(d)
    whole = int(d)
    text = f"{whole:,}".replace(",", ".")
    cents = int((d - whole) * 100)
    if cents:
        text += f",{cents:02d}"
    return sign + text


def fmt_qty(value: Any) -> str:
    d = Decimal(str(value)).normalize()
    whole = int(d)
    text = f"{whole:,}".replace(",", ".")
    frac = format(d, "f").partition(".")[2]
    return text + ("," + frac if frac else "")


def fmt_rate(value: Any) -> str:
    d = Decimal(str(value)).normalize()
    return format(d, "f").replace(".", ",") + "%"


def fmt_time(timestamp: str, *, with_zone: bool = False) -> str:
    """ISO timestamp → `jj/MM/aaaa HH:mm:ss` (the time as sealed, in the outlet's zone)."""
    moment = datetime.fromisoformat(timestamp)
    text = moment.strftime("%d/%m/%Y %H:%M:%S")
    if with_zone:
        off = moment.strftime("%z")
        text += f" UTC{off[:3]}:{off[3:]}" if off else ""
    return text


def latin1(text: str) -> str:
    """The PDF core fonts are Latin-1: keep accents, replace what Latin-1 lacks."""
    return text.replace("’", "'").replace("—", "-").encode("latin-1", "replace").decode("latin-1")
