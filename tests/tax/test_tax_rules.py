"""Invoices the tax rules refuse, each with the field it names."""
from __future__ import annotations

from decimal import Decimal

import pytest

from fiscal.money import MAX_AMOUNT
from fiscal.tax import TaxError, TaxTable, compute, line_amounts
from fiscal.models import Item
from tax_factories import D2025, D2026, item, req


def refused(request, on=D2026) -> list[dict]:
    with pytest.raises(TaxError) as exc:
        compute(request, on)
    assert isinstance(exc.value, ValueError)
    return exc.value.errors


# item types ------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", list("ABCDEFGHIKMOP"))
def test_tax_items_refused_outside_j_l_n(group):
    r = req([item("M", "1.00"), item("B", "1.00"), item(group, "10.00", type="TAX")], comments={"A": "REF"})
    errors = refused(r)
    assert [e["field"] for e in errors] == ["items[2].tax_group"]
    assert "item type TAX" in errors[0]["message"]


@pytest.mark.parametrize("group, type", [("L", "BIE"), ("L", "SER"), ("N", "BIE"), ("N", "SER"), ("H", "SER")])
def test_goods_and_services_refused_in_tax_only_groups(group, type):
    r = req([item("M", "1.00"), item(group, "10.00", type=type)])
    assert [e["field"] for e in refused(r)] == ["items[1].tax_group"]


@pytest.mark.parametrize("group, type", [("L", "TAX"), ("J", "TAX"), ("J", "SER"), ("H", "BIE"), ("I", "SER")])
def test_allowed_item_types(group, type):
    compute(req([item(group, "10.00", type=type)]), D2026)


def test_all_errors_reported_together():
    r = req([item("B", "1.00", type="TAX"), item("A", "1.00"), item("L", "1.00", type="TAX",
             specific_tax={"per_unit": "1.00"}), item("D", "1.00")])
    assert [e["field"] for e in refused(r)] == ["items[0].tax_group", "items[2].specific_tax", "comments.A"]


# specific tax ----------------------------------------------------------------------------------

@pytest.mark.parametrize("group, type", [("H", "BIE"), ("I", "BIE"), ("J", "SER"), ("L", "TAX"), ("N", "TAX")])
def test_specific_tax_refused_on_non_sales(group, type):
    r = req([item("M", "1.00"), item(group, "10.00", type=type, specific_tax={"percent": "5"})])
    assert [e["field"] for e in refused(r)] == ["items[1].specific_tax"]


def test_ttc_specific_tax_larger_than_price_before_vat_refused():
    # MH = 1.00 × 100/116 − 7.00 × 16/116 < 0
    r = req([item("B", "1.00", specific_tax={"per_unit": "7.00"})])
    assert [e["field"] for e in refused(r)] == ["items[0].specific_tax"]
    # in HT mode the same item is fine: base 8.00, VAT 1.28
    line = compute(req([item("B", "1.00", specific_tax={"per_unit": "7.00"})], price_mode="HT"), D2026).lines[0]
    assert (line.total, line.ht, line.vat, line.specific_tax) == (
        Decimal("9.28"), Decimal("1.00"), Decimal("1.28"), Decimal("7.00"))


# export ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("type", ["EV", "ET", "EA"])
@pytest.mark.parametrize("group", list("BCDFGKMOP"))
def test_export_refuses_domestic_groups(type, group):
    extra = {"reference": {"nature": "COR", "code": "A" * 24}} if type == "EA" else {}
    r = req([item("E", "100.00"), item(group, "10.00")], type=type, comments={"A": "REF"}, **extra)
    errors = refused(r)
    assert [e["field"] for e in errors] == ["items[1].tax_group"]
    assert "export" in errors[0]["message"]


def test_export_refuses_n():
    r = req([item("E", "100.00"), item("N", "10.00", type="TAX")], type="EV")
    # N is refused both for export and for lacking an M line
    assert {e["field"] for e in refused(r)} == {"items[1].tax_group"}


def test_export_accepts_e_a_and_non_turnover_groups():
    items = [item("E", "1000.00"), item("A", "10.00"), item("H", "5.00"), item("I", "5.00"),
             item("J", "50.00", type="TAX"), item("L", "20.00", type="TAX")]
    totals = compute(req(items, type="EV"), D2026).totals
    assert totals.total == Decimal("1090.00") and totals.vat == Decimal("0.00")


def test_group_e_allowed_on_domestic_invoice():
    assert compute(req([item("E", "100.00")]), D2026).totals.vat == Decimal("0.00")


# group D ---------------------------------------------------------------------------------------

def test_d_comment_error_names_first_d_item():
    errors = refused(req([item("A", "1.00"), item("D", "1.00"), item("D", "2.00")]))
    assert errors == [{"field": "comments.A", "message":
                       "group D (items[1]) needs the reference of the DGI derogation document in comment line A"}]


# zero and overflow -----------------------------------------------------------------------------

def test_zero_line_amount_refused():
    assert [e["field"] for e in refused(req([item("B", "0.01", "0.001")]))] == ["items[0].quantity"]


def test_smallest_line_accepted():
    line = compute(req([item("B", "0.01", "0.5")]), D2026).lines[0]  # 0.005 → 0.01
    assert (line.total, line.vat) == (Decimal("0.01"), Decimal("0.00"))


BIG = str(MAX_AMOUNT)


def test_line_overflow_refused():
    assert [e["field"] for e in refused(req([item("B", BIG, "999999999.999")]))] == ["items[0]"]


def test_line_overflow_with_vat_in_ht_mode_refused():
    assert [e["field"] for e in refused(req([item("B", BIG)], price_mode="HT"))] == ["items[0]"]


def test_specific_tax_overflow_refused():
    r = req([item("A", "1.00", "1000", specific_tax={"per_unit": BIG})])
    assert [e["field"] for e in refused(r)] == ["items[0].specific_tax"]


def test_invoice_total_overflow_refused():
    r = req([item("A", "600000000000000.00"), item("B", "600000000000000.00")])
    assert [e["field"] for e in refused(r)] == ["items"]


def test_group_total_overflow_refused():
    r = req([item("B", "600000000000000.00"), item("B", "600000000000000.00")])
    assert [e["field"] for e in refused(r)] == ["items"]


def test_max_amount_itself_accepted():
    totals = compute(req([item("A", BIG)]), D2026).totals
    assert totals.total == MAX_AMOUNT


def test_usd_equivalent_overflow_refused():
    r = req([item("A", "100000000000000.00")], usd_rate={"rate": "0.01", "date": "2026-01-01"})
    assert [e["field"] for e in refused(r)] == ["usd_rate.rate"]


def test_payments_overflow_refused():
    r = req([item("A", "1.00")], payments=[{"method": "E", "amount": BIG}, {"method": "E", "amount": "1.00"}])
    assert [e["field"] for e in refused(r)] == ["payments[1]"]
    r = req([item("A", BIG)], payments=[{"method": "C", "amount": "1.00"}, {"method": "E", "amount": BIG}])
    assert [e["field"] for e in refused(r)] == ["payments"]


# payments --------------------------------------------------------------------------------------

def test_every_payment_after_full_payment_is_named():
    payments = [{"method": "C"}, {"method": "E"}, {"method": "V", "amount": "1.00"}]
    assert [e["field"] for e in refused(req([item("B", "10.00")], payments=payments))] == [
        "payments[1]", "payments[2]"]


def test_cash_overpayment_gives_change():
    t = compute(req([item("B", "10.00")], payments=[{"method": "cash", "amount": "50.00"}]), D2026).totals
    assert (t.paid, t.change) == (Decimal("50.00"), Decimal("40.00"))


def test_underpayment_completed_in_cash():
    payments = [{"method": "E", "amount": "3.00"}, {"method": "C", "amount": "2.00"}]
    t = compute(req([item("B", "10.00")], payments=payments), D2026).totals
    assert [(p.method, p.amount) for p in t.payments] == [
        ("E", Decimal("3.00")), ("C", Decimal("2.00")), ("E", Decimal("5.00"))]
    assert (t.paid, t.change) == (Decimal("10.00"), Decimal("0.00"))


# line_amounts helper ---------------------------------------------------------------------------

def test_line_amounts_helper_matches_compute():
    rule = TaxTable.load().group("B", D2025)
    it = Item.model_validate(item("B", "500.00", "4", specific_tax={"per_unit": "75.00"}))
    assert line_amounts(it, rule, "TTC") == compute(req([item("B", "500.00", "4", specific_tax={"per_unit": "75.00"})]), D2025).lines[0]


def test_group_total_helper_matches_33h_semantics():
    from fiscal.tax import group_total, vat_in_ttc, vat_on_ht

    rule = TaxTable.load().group("B", D2025)
    gt = group_total(rule, Decimal("500.00"), "TTC")
    assert (gt.total, gt.ht, gt.vat) == (Decimal("500.00"), Decimal("431.03"), Decimal("68.97"))
    gt = group_total(rule, Decimal("1025.00"), "HT")
    assert (gt.total, gt.ht, gt.vat) == (Decimal("1189.00"), Decimal("1025.00"), Decimal("164.00"))
    assert vat_in_ttc(Decimal("464.00"), Decimal("16.00")) == Decimal("64.00")
    assert vat_on_ht(Decimal("0.03"), Decimal("16.00")) == Decimal("0.00")  # 0.0048
    assert vat_on_ht(Decimal("0.04"), Decimal("16.00")) == Decimal("0.01")  # 0.0064
    with pytest.raises(TaxError):
        group_total(rule, MAX_AMOUNT, "HT")
