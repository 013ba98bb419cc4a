"""The tax engine: line amounts (31h), group totals (33h), payments (35h) of an invoice.

The rules, with worked examples, are in docs/tax-rules.md. In short: amounts are rounded to the
cent half away from zero; VAT is computed per tax group on the group's accumulated amount (which
is what the MCF reports in 33h and checks in 38h), and per line with the same formula for 31h.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext

from ..models import GroupTotal, InvoiceRequest, Item, LineAmounts, Totals
from ..money import MAX_AMOUNT, fmt2, q2
from .errors import TaxError
from .payments import settle
from .rules import check_invoice
from .table import GroupRule, TaxTable

ZERO = Decimal("0.00")
HUNDRED = Decimal(100)

# Inputs have at most 17 digits (amounts) and 12 (quantities); 60 significant digits keep every
# product exact and put every quotient far enough from a half-cent that the final rounding to the
# cent is the one exact arithmetic would give (a quotient p/q with q < 10^20 cannot come within
# 10^-40 of a half-cent without being on it).
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])


@dataclass(frozen=True)
class TaxResult:
    lines: list[LineAmounts]
    totals: Totals


def vat_in_ttc(ttc: Decimal, rate: Decimal) -> Decimal:
    """VAT contained in a VAT-inclusive amount: round(TTC × r / (100 + r), 2)."""
    return q2(_CONTEXT.divide(_CONTEXT.multiply(ttc, rate), HUNDRED + rate))


def vat_on_ht(base: Decimal, rate: Decimal) -> Decimal:
    """VAT on an amount before VAT: round(base × r / 100, 2)."""
    return q2(_CONTEXT.divide(_CONTEXT.multiply(base, rate), HUNDRED))


def specific_tax(item: Item, amount: Decimal) -> Decimal:
    """The T.S. of an item: per unit × quantity, or percent of the line amount, to the cent."""
    st = item.specific_tax
    if st is None:
        return ZERO
    if st.per_unit is not None:
        return q2(st.per_unit * item.quantity)
    return q2(amount * st.percent / HUNDRED)


def line_amounts(item: Item, rule: GroupRule, price_mode: str) -> LineAmounts:
    """One item's MV / MH / MT / TS, as the MCF answers 31h. Raises TaxError (field `item`)."""
    with localcontext(_CONTEXT):
        return _line(item, rule, price_mode, "item")


def _check(value: Decimal, field: str, what: str) -> Decimal:
    if value > MAX_AMOUNT:
        raise TaxError.one(field, f"{what} exceeds the largest amount allowed ({fmt2(MAX_AMOUNT)})")
    return value


def _line(item: Item, rule: GroupRule, price_mode: str, at: str) -> LineAmounts:
    amount = _check(q2(item.unit_price * item.quantity), at, "unit_price × quantity")
    if amount <= 0:
        raise TaxError.one(f"{at}.quantity",
                           f"unit_price × quantity = {item.unit_price * item.quantity} rounds to 0.00")
    ts = _check(specific_tax(item, amount), f"{at}.specific_tax", "the specific tax")
    if rule.kind == "specific_vat":  # N: the whole line is VAT
        return LineAmounts(total=amount, ht=ZERO, vat=amount, specific_tax=ZERO)
    if price_mode == "TTC":
        total = _check(amount + ts, at, "the line total")
        vat = vat_in_ttc(total, rule.rate)
        ht = total - vat - ts
        if ht < 0:
            raise TaxError.one(
                f"{at}.specific_tax",
                f"the specific tax {fmt2(ts)} is larger than the item's price before VAT: "
                f"{fmt2(total)} TTC less {fmt2(vat)} VAT leaves {fmt2(total - vat)}")
    else:
        base = amount + ts
        vat = vat_on_ht(base, rule.rate)
        total = _check(base + vat, at, "the line total")
        ht = amount
    return LineAmounts(total=total, ht=ht, vat=vat, specific_tax=ts)


def group_total(rule: GroupRule, gross: Decimal, price_mode: str) -> GroupTotal:
    """A group's totals (33h MVx, MTx) from its accumulated amount: TTC mode Σ(A + TS) = TTC,
    HT mode Σ(A + TS) = base, N Σ A. Raises TaxError (field `items`) beyond MAX_AMOUNT."""
    with localcontext(_CONTEXT):
        return _group_total(rule, gross, price_mode)


def _group_total(rule: GroupRule, gross: Decimal, price_mode: str) -> GroupTotal:
    if rule.kind == "specific_vat":
        total, vat = gross, gross
    elif price_mode == "TTC":
        total = gross
        vat = vat_in_ttc(gross, rule.rate)
    else:
        vat = vat_on_ht(gross, rule.rate)
        total = gross + vat
    _check(total, "items", f"the total of group {rule.group}")
    return GroupTotal(rate=rule.rate, total=total, ht=total - vat, vat=vat)


def compute(request: InvoiceRequest, on: date, table: TaxTable | None = None) -> TaxResult:
    """Lines and totals of `request` with the tax table in force on `on`. Raises only TaxError."""
    table = table if table is not None else TaxTable.load()
    with localcontext(_CONTEXT):
        try:
            return _compute(request, on, table)
        except ArithmeticError as exc:
            # Not reachable with validated inputs (see _CONTEXT); a decimal signal still becomes
            # a refusal of the invoice, never a 500.
            raise TaxError.one("items", f"the amounts cannot be computed: {exc!r}") from exc


def _compute(request: InvoiceRequest, on: date, table: TaxTable) -> TaxResult:
    period = table.period_on(on)
    rules = check_invoice(request, period, on)

    lines: list[LineAmounts] = []
    gross: dict[str, Decimal] = {}
    ts_total = ZERO
    for i, (item, rule) in enumerate(zip(request.items, rules)):
        line = _line(item, rule, request.price_mode, f"items[{i}]")
        lines.append(line)
        ts_total += line.specific_tax
        # What the group accumulates: in TTC mode (and for N) the line total; in HT mode the base,
        # amount + T.S., so that the group's VAT is computed once on the sum.
        if request.price_mode == "TTC" or rule.kind == "specific_vat":
            contribution = line.total
        else:
            contribution = line.ht + line.specific_tax
        gross[item.tax_group] = gross.get(item.tax_group, ZERO) + contribution

    by_group = {g: _group_total(period.groups[g], gross[g], request.price_mode) for g in sorted(gross)}
    total = _check(sum((gt.total for gt in by_group.values()), ZERO), "items", "the invoice total")
    vat = sum((gt.vat for gt in by_group.values()), ZERO)

    usd = None
    if request.usd_rate is not None:
        usd = _check(q2(total / request.usd_rate.rate), "usd_rate.rate", "the USD equivalent")

    payments, paid, change = settle(request.payments, total)
    totals = Totals(total=total, vat=vat, specific_tax=ts_total, usd_equivalent=usd,
                    by_group=by_group, payments=payments, paid=paid, change=change)
    return TaxResult(lines=lines, totals=totals)


def credit_note_limit_check(credit: Totals, original_total: Decimal,
                            already_credited: Decimal = ZERO) -> None:
    """Refuse a credit note larger than what is left of its original invoice."""
    left = original_total - already_credited
    if credit.total > left:
        detail = f" less {fmt2(already_credited)} already credited" if already_credited else ""
        raise TaxError.one(
            "items",
            f"the credit note total {fmt2(credit.total)} exceeds its original invoice: "
            f"{fmt2(original_total)}{detail}")
