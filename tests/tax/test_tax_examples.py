"""Every worked example of docs/tax-rules.md § 9, with the exact amounts printed there."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from fiscal.models import Totals
from fiscal.tax import TaxError, TaxTable, compute, credit_note_limit_check, mcf_balances
from tax_factories import D2024, D2025, D2026, item, req


def line(total: str, ht: str, vat: str, ts: str = "0.00") -> dict:
    return {"total": total, "ht": ht, "vat": vat, "specific_tax": ts}


def group(rate: str, total: str, ht: str, vat: str) -> dict:
    return {"rate": rate, "total": total, "ht": ht, "vat": vat}


def dump(result) -> tuple[list[dict], dict]:
    return [ln.model_dump(mode="json") for ln in result.lines], result.totals.model_dump(mode="json")


# 9.1 -------------------------------------------------------------------------------------------

CHAPTER2 = [item("A", "720.00", "5", name="EAU"), item("B", "464.00", name="LAIT GR")]


def test_chapter2_invoice():
    lines, totals = dump(compute(req(CHAPTER2, invoice_number="345/2024"), D2024))
    assert lines == [line("3600.00", "3600.00", "0.00"), line("464.00", "400.00", "64.00")]
    assert totals == {
        "total": "4064.00", "vat": "64.00", "specific_tax": "0.00", "usd_equivalent": None,
        "by_group": {"A": group("0.00", "3600.00", "3600.00", "0.00"),
                     "B": group("16.00", "464.00", "400.00", "64.00")},
        "payments": [{"method": "E", "amount": "4064.00"}], "paid": "4064.00", "change": "0.00",
    }


def test_chapter2_labels():
    table = TaxTable.load()
    assert [table.label(g) for g in "AB"] == ["A-EX", "B"]
    assert table.label("A", D2024) == "A-EX"


def test_milk_alone():
    lines, totals = dump(compute(req([item("B", "464.00", name="LAIT GR")]), D2024))
    assert lines == [line("464.00", "400.00", "64.00")]
    assert totals["by_group"] == {"B": group("16.00", "464.00", "400.00", "64.00")}


def test_water_5_x_720_exempt():
    lines, totals = dump(compute(req([item("A", "720.00", "5", name="EAU")]), D2024))
    assert lines == [line("3600.00", "3600.00", "0.00")]
    assert totals["total"] == "3600.00" and totals["vat"] == "0.00"


# 9.2 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("it, expected", [
    (item("A", "380.00", name="Eau"), line("380.00", "380.00", "0.00")),
    (item("B", "930.00", name="JUS"), line("930.00", "801.72", "128.28")),
    (item("B", "930.00", "2", name="JUS"), line("1860.00", "1603.45", "256.55")),
    (item("B", "500.00", "4", name="SPEC", original_price="1000.00", price_change="réduction 50%"),
     line("2000.00", "1724.14", "275.86")),
], ids=["ex1-water-380", "ex2-jus-930", "ex3-2-jus", "ex6-price-change"])
def test_31h_examples(it, expected):
    lines, _ = dump(compute(req([it]), D2025))
    assert lines == [expected]


def test_both_jus_lines_on_one_invoice():
    _, totals = dump(compute(req([item("B", "930.00"), item("B", "930.00", "2")]), D2025))
    assert totals["by_group"] == {"B": group("16.00", "2790.00", "2405.17", "384.83")}
    assert totals["vat"] == "384.83"


# 9.3 -------------------------------------------------------------------------------------------

def test_31h_example4_per_unit_specific_tax():
    it = item("B", "500.00", "4", name="SPEC", specific_tax={"per_unit": "75.00"})
    lines, totals = dump(compute(req([it]), D2025))
    assert lines == [line("2300.00", "1682.76", "317.24", "300.00")]
    assert totals["by_group"]["B"] == group("16.00", "2300.00", "1982.76", "317.24")
    assert totals["specific_tax"] == "300.00"


def test_31h_example5_percent_specific_tax():
    it = item("B", "500.00", "4", name="SPEC", specific_tax={"percent": "10"})
    lines, totals = dump(compute(req([it]), D2025))
    assert lines == [line("2200.00", "1696.55", "303.45", "200.00")]
    assert totals["by_group"]["B"] == group("16.00", "2200.00", "1896.55", "303.45")


# 9.4 -------------------------------------------------------------------------------------------

def test_33h_example_we_compute_68_97_not_69():
    _, totals = dump(compute(req([item("A", "3600.00"), item("B", "500.00")]), D2025))
    assert totals["total"] == "4100.00"
    assert totals["by_group"] == {"A": group("0.00", "3600.00", "3600.00", "0.00"),
                                  "B": group("16.00", "500.00", "431.03", "68.97")}
    assert totals["vat"] == "68.97"


# 9.5 -------------------------------------------------------------------------------------------

def test_vat_per_group_not_sum_of_lines_ttc():
    lines, totals = dump(compute(req([item("B", "1.00")] * 3), D2026))
    assert lines == [line("1.00", "0.86", "0.14")] * 3
    assert totals["by_group"]["B"] == group("16.00", "3.00", "2.59", "0.41")
    assert totals["vat"] == "0.41"


# 9.6 -------------------------------------------------------------------------------------------

def test_product_spec_specific_tax_ht_mode():
    it = item("B", "1000.00", specific_tax={"per_unit": "25.00"})
    lines, totals = dump(compute(req([it], price_mode="HT"), D2026))
    assert lines == [line("1189.00", "1000.00", "164.00", "25.00")]
    assert totals["by_group"]["B"] == group("16.00", "1189.00", "1025.00", "164.00")
    assert (totals["total"], totals["vat"], totals["specific_tax"]) == ("1189.00", "164.00", "25.00")


def test_product_spec_specific_tax_ttc_mode():
    it = item("B", "1000.00", specific_tax={"per_unit": "25.00"})
    lines, totals = dump(compute(req([it]), D2026))
    assert lines == [line("1025.00", "858.62", "141.38", "25.00")]
    assert totals["by_group"]["B"] == group("16.00", "1025.00", "883.62", "141.38")


# 9.7 -------------------------------------------------------------------------------------------

def test_ht_mode_invoice():
    items = [item("B", "250.00", "3"), item("C", "99.99", "2"), item("A", "150.00", "1.5", type="SER")]
    lines, totals = dump(compute(req(items, price_mode="HT"), D2026))
    assert lines == [line("870.00", "750.00", "120.00"), line("209.98", "199.98", "10.00"),
                     line("225.00", "225.00", "0.00")]
    assert totals["by_group"] == {"A": group("0.00", "225.00", "225.00", "0.00"),
                                  "B": group("16.00", "870.00", "750.00", "120.00"),
                                  "C": group("5.00", "209.98", "199.98", "10.00")}
    assert (totals["total"], totals["vat"]) == ("1304.98", "130.00")


def test_ht_mode_vat_per_group():
    lines, totals = dump(compute(req([item("B", "3.03")] * 3, price_mode="HT"), D2026))
    assert lines == [line("3.51", "3.03", "0.48")] * 3
    assert totals["by_group"]["B"] == group("16.00", "10.54", "9.09", "1.45")


# 9.8 -------------------------------------------------------------------------------------------

def test_three_decimal_quantity():
    lines, _ = dump(compute(req([item("B", "123.45", "0.333")]), D2026))
    assert lines == [line("41.11", "35.44", "5.67")]


# 9.9 -------------------------------------------------------------------------------------------

def test_usd_equivalent():
    r = req(CHAPTER2, usd_rate={"rate": "2850.00", "date": "2024-12-04"})
    _, totals = dump(compute(r, D2024))
    assert totals["usd_equivalent"] == "1.43"


# 9.10 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("on, rate, vat, ht", [
    (date(2025, 12, 31), "8.00", "80.00", "1000.00"),
    (date(2026, 1, 1), "5.00", "51.43", "1028.57"),
])
def test_group_c_before_and_after_2026(on, rate, vat, ht):
    _, totals = dump(compute(req([item("C", "1080.00")]), on))
    assert totals["by_group"] == {"C": group(rate, "1080.00", ht, vat)}


def test_group_o_refused_in_2025():
    with pytest.raises(TaxError) as exc:
        compute(req([item("O", "100.00")]), date(2025, 6, 1))
    assert exc.value.errors == [{
        "field": "items[0].tax_group",
        "message": "tax group O does not exist on 2025-06-01 (groups then: ABCDEFGHIJKLMN)",
    }]


# 9.11 ------------------------------------------------------------------------------------------

def test_regulated_sale_with_specific_vat():
    items = [item("M", "1000.00", "40.5", name="GASOIL"), item("N", "6480.00", type="TAX", name="TVA SPEC")]
    lines, totals = dump(compute(req(items), D2026))
    assert lines == [line("40500.00", "40500.00", "0.00"), line("6480.00", "0.00", "6480.00")]
    assert totals["by_group"] == {"M": group("0.00", "40500.00", "40500.00", "0.00"),
                                  "N": group("0.00", "6480.00", "0.00", "6480.00")}
    assert (totals["total"], totals["vat"]) == ("46980.00", "6480.00")


def test_specific_vat_without_regulated_sale_refused():
    with pytest.raises(TaxError) as exc:
        compute(req([item("B", "10.00"), item("N", "6480.00", type="TAX")]), D2026)
    assert exc.value.fields == ["items[1].tax_group"]


def test_38h_example_amounts_reachable_with_m_and_n():
    items = [item("M", "2000.00"), item("N", "500.00", type="TAX")]
    _, totals = dump(compute(req(items), D2025))
    assert (totals["total"], totals["vat"]) == ("2500.00", "500.00")


# 9.12 ------------------------------------------------------------------------------------------

TOTAL_2400 = [item("B", "600.00", "4")]


@pytest.mark.parametrize("payments, recorded, answers, paid, change", [
    ([], [("E", "2400.00")], ["0.00"], "2400.00", "0.00"),
    ([{"method": "C", "amount": "2400.00"}], [("C", "2400.00")], ["0.00"], "2400.00", "0.00"),
    ([{"method": "M", "amount": "2000.00"}], [("M", "2000.00"), ("E", "400.00")], ["-400.00", "0.00"],
     "2400.00", "0.00"),
    ([{"method": "M", "amount": "1000.00"}, {"method": "V", "amount": "500.00"},
      {"method": "E", "amount": "1000.00"}],
     [("M", "1000.00"), ("V", "500.00"), ("E", "1000.00")], ["-1400.00", "-900.00", "100.00"],
     "2500.00", "100.00"),
], ids=["ex1-no-data", "ex2-card", "ex3-mobile-then-cash", "ex4-change"])
def test_35h_examples(payments, recorded, answers, paid, change):
    totals = compute(req(TOTAL_2400, payments=payments), D2025).totals
    assert totals.total == Decimal("2400.00")
    assert [(p.method, str(p.amount)) for p in totals.payments] == recorded
    assert [str(b) for b in mcf_balances(totals.payments, totals.total)] == answers
    assert (str(totals.paid), str(totals.change)) == (paid, change)


def test_payment_without_amount_takes_the_remainder():
    totals = compute(req(TOTAL_2400, payments=[{"method": "M", "amount": "1000.00"}, {"method": "C"}]), D2025).totals
    assert [(p.method, str(p.amount)) for p in totals.payments] == [("M", "1000.00"), ("C", "1400.00")]
    assert str(totals.change) == "0.00"


def test_payment_after_total_reached_refused():
    payments = [{"method": "C", "amount": "2400.00"}, {"method": "E", "amount": "100.00"}]
    with pytest.raises(TaxError) as exc:
        compute(req(TOTAL_2400, payments=payments), D2025)
    assert exc.value.fields == ["payments[1]"]


def test_non_cash_overpayment_refused():
    payments = [{"method": "M", "amount": "1000.00"}, {"method": "C", "amount": "1500.00"}]
    with pytest.raises(TaxError) as exc:
        compute(req(TOTAL_2400, payments=payments), D2025)
    assert exc.value.errors == [{
        "field": "payments[1].amount",
        "message": "a C payment of 1500.00 exceeds the 1400.00 still due; only cash (E) can be overpaid and give change",
    }]


# 9.13 ------------------------------------------------------------------------------------------

def test_group_d_with_derogation_reference():
    r = req([item("D", "1000.00")], comments={"A": "DGI/DRG/2026/0042"}, client={"type": "AO"})
    _, totals = dump(compute(r, D2026))
    assert totals["by_group"] == {"D": group("0.00", "1000.00", "1000.00", "0.00")}


@pytest.mark.parametrize("comments", [{}, {"A": "   "}, {"B": "DGI/DRG/2026/0042"}])
def test_group_d_without_comment_a_refused(comments):
    with pytest.raises(TaxError) as exc:
        compute(req([item("B", "10.00"), item("D", "1000.00")], comments=comments), D2026)
    assert exc.value.fields == ["comments.A"]
    assert "items[1]" in exc.value.errors[0]["message"]


# 9.14 ------------------------------------------------------------------------------------------

def _credit(amount: str) -> Totals:
    r = req([item("B", amount)], type="FA", reference={"nature": "COR", "code": "TESTFACTHQBAX2F3K22NMDYR"})
    return compute(r, D2024).totals


def test_credit_note_limit():
    original = Decimal("4064.00")
    credit_note_limit_check(_credit("464.00"), original)
    credit_note_limit_check(_credit("4064.00"), original)
    with pytest.raises(TaxError) as exc:
        credit_note_limit_check(_credit("4064.01"), original)
    assert exc.value.fields == ["items"]
    with pytest.raises(TaxError):
        credit_note_limit_check(_credit("464.00"), original, already_credited=Decimal("3700.00"))
    credit_note_limit_check(_credit("364.00"), original, already_credited=Decimal("3700.00"))
