"""The tax engine: line amounts (31h), group totals (33h), payments (35h) of an invoice.

The rules, with worked examples, are in docs/tax-rules.md. In short: amounts are rounded to the
cent half away from zero; VAT is computed per tax group on the group's accumulated amount (which
is what the MCF reports in 33h and checks in 38h), and per line with the same formula for 31h.
"""
from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext
from typing import Any

from ..models import GroupTotal, InvoiceRequest, Item, LineAmounts, PaymentLine, Totals
from ..money import CENT, MAX_AMOUNT, fmt2, q2
from .errors import TaxError
from .payments import CASH, settle
from .rules import check_invoice
from .table import GroupRule, TaxTable

ZERO = Decimal("0.00")
HUNDRED = Decimal(100)

# Inputs have at most 17 digits (amounts) and 12 (quantities); 60 significant digits keep every
# product exact and put every quotient far enough from a half-cent that the final rounding to the
# cent is the one exact arithmetic would give (a quotient p/q with q < 10^20 cannot come within
# 10^-40 of a half-cent without being on it).
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])


class TaxResult:
    """The lines and totals of an invoice.

    `lines` / `totals` are the pydantic models; `lines_json` / `totals_json` are exactly their
    `model_dump(mode="json")`. `compute` fills the result from plain amounts and builds each form
    only when it is first asked for (the HTTP path only needs the JSON forms). The JSON forms are
    built once and shared: a caller that wants to change them must copy them first.
    """

    __slots__ = ("_lines", "_totals", "_lines_json", "_totals_json", "_raw")

    def __init__(self, lines: list[LineAmounts], totals: Totals):
        self._lines: list[LineAmounts] | None = lines
        self._totals: Totals | None = totals
        self._lines_json: list[dict[str, Any]] | None = None
        self._totals_json: dict[str, Any] | None = None
        self._raw: tuple | None = None

    @classmethod
    def _from_amounts(cls, raw_lines: list[tuple[Decimal, Decimal, Decimal, Decimal]],
                      raw_totals: tuple) -> "TaxResult":
        self = cls.__new__(cls)
        self._lines = self._totals = self._lines_json = self._totals_json = None
        self._raw = (raw_lines, raw_totals)
        return self

    @property
    def lines(self) -> list[LineAmounts]:
        if self._lines is None:
            construct = LineAmounts.model_construct
            self._lines = [construct(total=t, ht=h, vat=v, specific_tax=s) for t, h, v, s in self._raw[0]]
        return self._lines

    @property
    def totals(self) -> Totals:
        if self._totals is None:
            total, vat, ts, usd, by_group, payments, paid, change = self._raw[1]
            gt, pl = GroupTotal.model_construct, PaymentLine.model_construct
            self._totals = Totals.model_construct(
                total=total, vat=vat, specific_tax=ts, usd_equivalent=usd,
                by_group={g: gt(rate=r, total=t, ht=h, vat=v) for g, (r, t, h, v) in by_group.items()},
                payments=[pl(method=m, amount=a) for m, a in payments], paid=paid, change=change)
        return self._totals

    @property
    def lines_json(self) -> list[dict[str, Any]]:
        """`[line.model_dump(mode="json") for line in lines]`, built once."""
        if self._lines_json is None:
            if self._raw is None:
                self._lines_json = [line.model_dump(mode="json") for line in self._lines]
            else:
                # Every amount of a line is a cent-quantized Decimal or a sum of them (exponent
                # -2), whose str() is its fmt2(); tests/tax/test_tax_fastpath.py checks the bytes.
                self._lines_json = [{"total": str(t), "ht": str(h), "vat": str(v), "specific_tax": str(s)}
                                    for t, h, v, s in self._raw[0]]
        return self._lines_json

    @property
    def totals_json(self) -> dict[str, Any]:
        """`totals.model_dump(mode="json")`, built once."""
        if self._totals_json is None:
            if self._raw is None:
                self._totals_json = self._totals.model_dump(mode="json")
            else:
                total, vat, ts, usd, by_group, payments, paid, change = self._raw[1]
                # As for the lines, computed amounts are exponent -2 and str() is fmt2(); the rates
                # (table data) and the payments (from the request: "5000" is valid) are formatted.
                self._totals_json = {
                    "total": str(total), "vat": str(vat), "specific_tax": str(ts),
                    "usd_equivalent": None if usd is None else str(usd),
                    "by_group": {g: {"rate": _fmt(r), "total": str(t), "ht": str(h), "vat": str(v)}
                                 for g, (r, t, h, v) in by_group.items()},
                    "payments": [{"method": m, "amount": _fmt(a)} for m, a in payments],
                    "paid": _fmt(paid), "change": _fmt(change),
                }
        return self._totals_json

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaxResult):
            return NotImplemented
        return self.lines == other.lines and self.totals == other.totals

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TaxResult(lines={self.lines!r}, totals={self.totals!r})"


_fmt = fmt2  # the Money serializer


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
    """Lines and totals of `request` with the tax table in force on `on`. Raises only TaxError.

    The fast path computes with plain Decimals and builds no model; at the first sign of a refusal
    (any check that fails, any decimal signal) it hands over to the reference computation, which
    produces the refusal with every message in its order. tests/tax/test_tax_fastpath.py proves
    both give the same result or the same error on generated invoices.
    """
    table = table if table is not None else TaxTable.load()
    try:
        with localcontext(_CONTEXT):
            result = _compute_fast(request, on, table)
    except ArithmeticError:
        result = None
    if result is not None:
        return result
    return compute_reference(request, on, table)


def compute_reference(request: InvoiceRequest, on: date, table: TaxTable | None = None) -> TaxResult:
    """The reference computation (one validated model per amount): the specification of `compute`."""
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


def _compute_fast(request: InvoiceRequest, on: date, table: TaxTable) -> TaxResult | None:
    """`_compute` on plain Decimals (under _CONTEXT), or None where `_compute` would refuse.

    Every operation is the one `_compute` does, in the same context and order, so every amount is
    the same Decimal (value and exponent). The models `_compute` validates its amounts into cannot
    refuse them: each is a sum or difference of cent amounts bounded by a checked total.
    """
    period = table.period_on(on)
    rules = check_invoice(request, period, on)
    ttc = request.price_mode == "TTC"
    max_amount = MAX_AMOUNT
    cent, half_up = CENT, ROUND_HALF_UP
    zero, hundred = ZERO, HUNDRED

    raw_lines: list[tuple[Decimal, Decimal, Decimal, Decimal]] = []
    append = raw_lines.append
    gross: dict[str, Decimal] = {}
    ts_total = zero
    for item, rule in zip(request.items, rules):
        quantity = item.quantity
        amount = (item.unit_price * quantity).quantize(cent, rounding=half_up)
        if amount > max_amount or amount <= 0:
            return None
        st = item.specific_tax
        if st is None:
            ts = zero
        else:
            if st.per_unit is not None:
                ts = (st.per_unit * quantity).quantize(cent, rounding=half_up)
            else:
                ts = (amount * st.percent / hundred).quantize(cent, rounding=half_up)
            if ts > max_amount:
                return None
        if rule.kind == "specific_vat":
            append((amount, zero, amount, zero))
            contribution = amount
        elif ttc:
            total = amount + ts
            if total > max_amount:
                return None
            rate = rule.rate
            vat = (total * rate / (hundred + rate)).quantize(cent, rounding=half_up)
            ht = total - vat - ts
            if ht < 0:
                return None
            append((total, ht, vat, ts))
            ts_total += ts
            contribution = total
        else:
            base = amount + ts
            vat = (base * rule.rate / hundred).quantize(cent, rounding=half_up)
            total = base + vat
            if total > max_amount:
                return None
            append((total, amount, vat, ts))
            ts_total += ts
            contribution = amount + ts
        group = item.tax_group
        gross[group] = gross.get(group, zero) + contribution

    groups = period.groups
    by_group: dict[str, tuple[Decimal, Decimal, Decimal, Decimal]] = {}
    total = vat_sum = zero
    for g in sorted(gross):
        rule = groups[g]
        amount = gross[g]
        rate = rule.rate
        if rule.kind == "specific_vat":
            g_total = g_vat = amount
        elif ttc:
            g_total = amount
            g_vat = (amount * rate / (hundred + rate)).quantize(cent, rounding=half_up)
        else:
            g_vat = (amount * rate / hundred).quantize(cent, rounding=half_up)
            g_total = amount + g_vat
        if g_total > max_amount:
            return None
        by_group[g] = (rate, g_total, g_total - g_vat, g_vat)
    for _, g_total, _, _ in by_group.values():
        total = total + g_total
    if total > max_amount:
        return None
    for _, _, _, g_vat in by_group.values():
        vat_sum = vat_sum + g_vat

    usd = None
    if request.usd_rate is not None:
        usd = (total / request.usd_rate.rate).quantize(cent, rounding=half_up)
        if usd > max_amount:
            return None

    # payments.settle without the models
    payments: list[tuple[str, Decimal]] = []
    paid = Decimal("0.00")
    for payment in request.payments:
        due = total - paid
        if due <= 0:
            return None
        amount = due if payment.amount is None else payment.amount
        method = payment.method
        if method != CASH and amount > due:
            return None
        payments.append((method, amount))
        paid += amount
    if paid < total:
        payments.append((CASH, total - paid))
        paid = total
    if paid > max_amount:
        return None
    return TaxResult._from_amounts(
        raw_lines, (total, vat_sum, ts_total, usd, by_group, payments, paid, paid - total))


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
