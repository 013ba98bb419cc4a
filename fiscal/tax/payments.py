"""Payments with the MCF's 35h semantics: remainder, automatic cash, change."""
from __future__ import annotations

from decimal import Decimal
from typing import Sequence

from ..models import Payment, PaymentLine
from ..money import MAX_AMOUNT, fmt2
from .errors import TaxError

CASH = "E"


def settle(payments: Sequence[Payment], total: Decimal) -> tuple[list[PaymentLine], Decimal, Decimal]:
    """The recorded payment lines, the amount paid and the change, for an invoice of `total`.

    - a payment with an amount records that amount; one without takes what remains due;
    - a payment once the total is reached is refused (the MCF answers a further 35h with an error);
    - a non-cash payment may not exceed what remains due: only cash gives change;
    - what remains unpaid at the end is recorded as cash (E), as the MCF does; no payments at all
      therefore means cash for the whole amount.
    """
    lines: list[PaymentLine] = []
    errors: list[dict[str, str]] = []
    paid = Decimal("0.00")
    for i, payment in enumerate(payments):
        due = total - paid
        if due <= 0:
            errors.append({
                "field": f"payments[{i}]",
                "message": f"the invoice ({fmt2(total)}) is already fully paid by the payments before "
                           "this one; the MCF refuses a payment once the total is reached",
            })
            continue
        amount = due if payment.amount is None else payment.amount
        if payment.method != CASH and amount > due:
            errors.append({
                "field": f"payments[{i}].amount",
                "message": f"a {payment.method} payment of {fmt2(amount)} exceeds the {fmt2(due)} still due; "
                           "only cash (E) can be overpaid and give change",
            })
            continue
        lines.append(PaymentLine(method=payment.method, amount=amount))
        paid += amount
    if errors:
        raise TaxError(errors)
    if paid < total:
        lines.append(PaymentLine(method=CASH, amount=total - paid))
        paid = total
    if paid > MAX_AMOUNT:
        raise TaxError.one("payments", f"the payments add up to more than {fmt2(MAX_AMOUNT)}")
    return lines, paid, paid - total


def mcf_balances(lines: Sequence[PaymentLine], total: Decimal) -> list[Decimal]:
    """What the MCF answers (MP of 35h) after each recorded line: paid so far minus the total."""
    out: list[Decimal] = []
    paid = Decimal("0.00")
    for line in lines:
        paid += line.amount
        out.append(paid - total)
    return out
