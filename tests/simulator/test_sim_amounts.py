"""The device's own arithmetic: the document's self-consistent examples, and invariants."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.amounts import (
    InvoiceTotals,
    SpecificTax,
    fmt_payment,
    fmt_subtotal,
    line_amounts,
    money,
    parse_decimal,
)

D = Decimal
RATES = {g: D("0") for g in "ABCDEFGHIJKLMNOP"} | {"B": D("16"), "C": D("5")}


@pytest.mark.parametrize(
    "price, qty, rate, mv, mh, mt",
    [
        ("464", "1", "16", "464.00", "400.00", "64.00"),  # milk, chapter 2
        ("930", "1", "16", "930.00", "801.72", "128.28"),  # 31h example 2
        ("930", "2", "16", "1860.00", "1603.45", "256.55"),  # 31h example 3
        ("380", "1", "0", "380.00", "380.00", "0.00"),  # 31h example 1, exempt
        ("720", "5", "0", "3600.00", "3600.00", "0.00"),  # water, chapter 2
    ],
)
def test_ttc_lines(price: str, qty: str, rate: str, mv: str, mh: str, mt: str) -> None:
    a = line_amounts(D(price), D(qty), D(rate), ht_mode=False)
    assert (str(a.mv), str(a.mh), str(a.mt), str(a.ts)) == (mv, mh, mt, "0")


def test_specific_tax_enters_the_vat_base() -> None:
    # product.md: 1,000 CDF at 16 % with a 25 CDF specific tax -> VAT on 1,025.
    ht = line_amounts(D("1000"), D("1"), D("16"), ht_mode=True, specific=SpecificTax(D("25"), False))
    assert (ht.mv, ht.mh, ht.mt, ht.ts) == (D("1189.00"), D("1000.00"), D("164.00"), D("25.00"))
    pct = line_amounts(D("500"), D("4"), D("16"), ht_mode=False, specific=SpecificTax(D("10"), True))
    assert (pct.ts, pct.mv) == (D("200.00"), D("2200.00"))


def test_rounding_is_half_up() -> None:
    assert money(D("0.125")) == D("0.13")
    assert money(D("2.675")) == D("2.68")
    line = line_amounts(D("0.5"), D("0.125"), D("0"), ht_mode=False)  # 0.0625
    assert line.line == D("0.06")


def test_dgi_example_invoice_totals() -> None:
    totals = InvoiceTotals(ht_mode=False, rates=RATES)
    totals.add("A", line_amounts(D("720"), D("5"), D("0"), False))
    totals.add("B", line_amounts(D("464"), D("1"), D("16"), False))
    sub = totals.subtotal()
    assert (sub.mv, sub.mv_by_group["A"], sub.mv_by_group["B"], sub.mt) == (
        D("4064.00"), D("3600.00"), D("464.00"), D("64.00"),
    )


def test_formats() -> None:
    assert [fmt_payment(D(x)) for x in ("0", "-400", "100", "-0.5")] == ["0", "-400", "100", "-0.50"]
    assert [fmt_subtotal(D(x)) for x in ("0", "0.00", "69")] == ["0", "0", "69.00"]
    with pytest.raises(ValueError):
        parse_decimal("1.234")
    with pytest.raises(ValueError):
        parse_decimal("-1")
    assert parse_decimal("1.234", places=3) == D("1.234")


cents = st.integers(min_value=1, max_value=10_000_000).map(lambda c: D(c) / 100)
quantities = st.integers(min_value=1, max_value=100_000).map(lambda q: D(q) / 1000)
rates = st.sampled_from([D("0"), D("1"), D("5"), D("16")])


@given(price=cents, qty=quantities, rate=rates)
def test_ttc_line_splits_exactly(price: Decimal, qty: Decimal, rate: Decimal) -> None:
    a = line_amounts(price, qty, rate, ht_mode=False)
    assert a.mh + a.mt + a.ts == a.mv == a.line
    assert a.mt >= 0 and a.mh >= 0


@given(price=cents, qty=quantities, rate=rates, ts=cents)
def test_ht_line_adds_vat_on_price_and_specific_tax(price: Decimal, qty: Decimal, rate: Decimal, ts: Decimal) -> None:
    a = line_amounts(price, qty, rate, ht_mode=True, specific=SpecificTax(ts, False))
    assert a.mv == a.mh + a.ts + a.mt
    assert a.mt == money((a.mh + a.ts) * rate / 100)


@given(lines=st.lists(st.tuples(cents, st.sampled_from("ABC")), min_size=1, max_size=20))
def test_group_totals_add_up(lines: list[tuple[Decimal, str]]) -> None:
    totals = InvoiceTotals(ht_mode=False, rates=RATES)
    for price, group in lines:
        totals.add(group, line_amounts(price, D(1), RATES[group], False))
    sub = totals.subtotal()
    assert sub.mv == sum(p for p, _ in lines)
    assert sub.mv == sum(sub.mv_by_group.values())
