"""Properties of the tax engine over generated invoices (hypothesis)."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fiscal.models import Payment
from fiscal.money import MAX_AMOUNT, q2
from fiscal.tax import EXPORT_TYPES, TaxError, TaxTable, compute
from tax_factories import req

TABLE = TaxTable.load()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DATES = st.sampled_from([date(2024, 12, 4), date(2025, 12, 31), date(2026, 1, 1), date(2026, 3, 1)])
INVOICE_TYPES = st.sampled_from(["FV", "FT", "EV", "ET", "FA", "EA"])
REFERENCE = {"nature": "COR", "code": "TESTFACTHQBAX2F3K22NMDYR"}


def money(cents: int) -> str:
    return format(Decimal(cents).scaleb(-2), "f")


def qty(millis: int) -> str:
    return format(Decimal(millis).scaleb(-3), "f")


@st.composite
def valid_invoices(draw, with_payments: bool = False):
    """Invoices the rules accept: groups of the period, allowed item types, D with comment A..."""
    on = draw(DATES)
    period = TABLE.period_on(on)
    inv_type = draw(INVOICE_TYPES)
    export = inv_type in EXPORT_TYPES
    groups = sorted(g for g, r in period.groups.items() if r.on_export or not export)
    items = []
    for _ in range(draw(st.integers(1, 12))):
        group = draw(st.sampled_from(groups))
        rule = period.groups[group]
        price = draw(st.integers(100, 10**9))  # 1.00 .. 10,000,000.00
        it = {"name": "ART", "type": draw(st.sampled_from(sorted(rule.item_types))), "tax_group": group,
              "unit_price": money(price), "quantity": qty(draw(st.integers(5, 10**6)))}
        if rule.specific_tax and draw(st.booleans()):
            if draw(st.booleans()):
                it["specific_tax"] = {"per_unit": money(draw(st.integers(1, price)))}
            else:
                it["specific_tax"] = {"percent": format(Decimal(draw(st.integers(1, 10**6))).scaleb(-4), "f")}
        items.append(it)
    if any(i["tax_group"] == "N" for i in items) and not any(i["tax_group"] == "M" for i in items):
        items.append({"name": "REG", "type": "BIE", "tax_group": "M", "unit_price": "100.00"})
    fields = {"type": inv_type, "price_mode": draw(st.sampled_from(["TTC", "HT"]))}
    if any(i["tax_group"] == "D" for i in items):
        fields["comments"] = {"A": "DGI/DRG/0001"}
    if inv_type in ("FA", "EA"):
        fields["reference"] = REFERENCE
    if draw(st.booleans()):
        fields["usd_rate"] = {"rate": money(draw(st.integers(1, 10**6))), "date": "2026-01-01"}
    return req(items, **fields), on


def amounts_of(result) -> list[Decimal]:
    t = result.totals
    out = [t.total, t.vat, t.specific_tax, t.paid, t.change]
    out += [a for ln in result.lines for a in (ln.total, ln.ht, ln.vat, ln.specific_tax)]
    out += [a for g in t.by_group.values() for a in (g.rate, g.total, g.ht, g.vat)]
    out += [p.amount for p in t.payments]
    if t.usd_equivalent is not None:
        out.append(t.usd_equivalent)
    return out


@SETTINGS
@given(valid_invoices())
def test_totals_are_sums_of_groups(case):
    request, on = case
    t = compute(request, on).totals
    assert t.total == sum((g.total for g in t.by_group.values()), Decimal(0))
    assert t.vat == sum((g.vat for g in t.by_group.values()), Decimal(0))
    assert set(t.by_group) == {i.tax_group for i in request.items}
    assert list(t.by_group) == sorted(t.by_group)
    for g in t.by_group.values():
        assert g.total == g.ht + g.vat


@SETTINGS
@given(valid_invoices())
def test_groups_agree_with_lines(case):
    request, on = case
    result = compute(request, on)
    period = TABLE.period_on(on)
    assert result.totals.specific_tax == sum((ln.specific_tax for ln in result.lines), Decimal(0))
    for group, gt in result.totals.by_group.items():
        lines = [ln for ln, it in zip(result.lines, request.items) if it.tax_group == group]
        assert gt.rate == period.groups[group].rate
        if request.price_mode == "TTC" or group == "N":
            assert gt.total == sum((ln.total for ln in lines), Decimal(0))
        else:
            assert gt.ht == sum((ln.ht + ln.specific_tax for ln in lines), Decimal(0))
        # per-group rounding differs from the sum of per-line roundings by at most half a cent a line
        assert abs(gt.vat - sum((ln.vat for ln in lines), Decimal(0))) <= Decimal("0.005") * (len(lines) + 1)
    for ln in result.lines:
        assert ln.total == ln.ht + ln.vat + ln.specific_tax


@SETTINGS
@given(valid_invoices())
def test_vat_signs_and_zero_rates(case):
    request, on = case
    result = compute(request, on)
    period = TABLE.period_on(on)
    for ln, it in zip(result.lines, request.items):
        assert ln.vat >= 0 and ln.ht >= 0 and ln.total > 0
        if period.groups[it.tax_group].rate == 0 and it.tax_group != "N":
            assert ln.vat == 0
    for group, gt in result.totals.by_group.items():
        assert gt.vat >= 0 and gt.ht >= 0
        if gt.rate == 0 and group != "N":
            assert gt.vat == 0
        if group == "N":
            assert gt.ht == 0 and gt.vat == gt.total
    assert result.totals.vat >= 0


@SETTINGS
@given(valid_invoices())
def test_amounts_have_two_decimals(case):
    request, on = case
    result = compute(request, on)
    for amount in amounts_of(result):
        assert amount == q2(amount) and amount.as_tuple().exponent == -2, amount
        assert abs(amount) <= MAX_AMOUNT
    t = result.totals
    if request.usd_rate is None:
        assert t.usd_equivalent is None
    else:
        assert t.usd_equivalent == q2(t.total / request.usd_rate.rate)


@SETTINGS
@given(valid_invoices(), st.data())
def test_independent_of_item_order(case, data):
    request, on = case
    order = data.draw(st.permutations(range(len(request.items))))
    shuffled = request.model_copy(update={"items": [request.items[i] for i in order]})
    a, b = compute(request, on), compute(shuffled, on)
    assert a.totals == b.totals
    assert b.lines == [a.lines[i] for i in order]


@SETTINGS
@given(valid_invoices(), st.data())
def test_payments_settle_the_total(case, data):
    request, on = case
    payments, due = [], compute(request, on).totals.total
    for _ in range(data.draw(st.integers(0, 4))):
        if due <= 0:
            break
        method = data.draw(st.sampled_from("EVCMDA"))
        if data.draw(st.booleans()):
            payments.append({"method": method})
            due = Decimal(0)
            continue
        limit = int(due * 100) * (3 if method == "E" else 1)
        amount = Decimal(data.draw(st.integers(1, max(limit, 1)))).scaleb(-2)
        payments.append({"method": method, "amount": format(amount, "f")})
        due -= amount
    t = compute(request, on).totals
    paid = request.model_copy(update={"payments": [Payment.model_validate(x) for x in payments]})
    p = compute(paid, on).totals
    assert p.total == t.total and p.by_group == t.by_group
    assert p.paid >= p.total and p.change >= 0
    assert p.paid - p.change == p.total
    assert p.paid == sum((line.amount for line in p.payments), Decimal(0))
    # only cash can produce change
    if p.change > 0:
        assert p.payments[-1].method == "E"


# never anything but TaxError -----------------------------------------------------------------

BIG_MONEY = st.one_of(st.integers(1, 10**6), st.integers(1, 10**17 - 1))


@st.composite
def any_invoices(draw):
    """Anything the models accept, valid or not for the tax rules, up to the largest amounts."""
    items = []
    for _ in range(draw(st.integers(1, 6))):
        it = {"name": "X", "type": draw(st.sampled_from(["BIE", "SER", "TAX"])),
              "tax_group": draw(st.sampled_from("ABCDEFGHIJKLMNOP")),
              "unit_price": money(draw(BIG_MONEY)),
              "quantity": qty(draw(st.one_of(st.integers(1, 10**4), st.integers(1, 10**12 - 1))))}
        ts = draw(st.sampled_from([None, "per_unit", "percent"]))
        if ts == "per_unit":
            it["specific_tax"] = {"per_unit": money(draw(BIG_MONEY))}
        elif ts == "percent":
            it["specific_tax"] = {"percent": format(Decimal(draw(st.integers(1, 10**6))).scaleb(-4), "f")}
        items.append(it)
    inv_type = draw(INVOICE_TYPES)
    fields = {"type": inv_type, "price_mode": draw(st.sampled_from(["TTC", "HT"])),
              "payments": [{"method": draw(st.sampled_from("EVCMDA")),
                            **({"amount": money(draw(BIG_MONEY))} if draw(st.booleans()) else {})}
                           for _ in range(draw(st.integers(0, 4)))]}
    if draw(st.booleans()):
        fields["comments"] = {"A": draw(st.sampled_from(["REF", " "]))}
    if inv_type in ("FA", "EA"):
        fields["reference"] = REFERENCE
    if draw(st.booleans()):
        fields["usd_rate"] = {"rate": money(draw(BIG_MONEY)), "date": "2026-01-01"}
    on = draw(st.dates(date(2023, 6, 1), date(2027, 12, 31)))
    return req(items, **fields), on


@settings(max_examples=300, deadline=None)
@given(any_invoices())
def test_never_raises_anything_but_tax_error(case):
    request, on = case
    try:
        result = compute(request, on)
    except TaxError as exc:
        assert exc.errors and all(set(e) == {"field", "message"} for e in exc.errors)
        assert all(isinstance(e["field"], str) and e["message"] for e in exc.errors)
        return
    for amount in amounts_of(result):
        assert abs(amount) <= MAX_AMOUNT
    assert result.totals.paid - result.totals.change == result.totals.total
