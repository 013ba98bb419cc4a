"""The fast path of `compute` gives exactly what the reference computation gives (hypothesis).

`compute` works on plain Decimals and hands over to `compute_reference` at the first sign of a
refusal; these properties check, on generated invoices valid or not, that both give the same
refusal (the same fields and messages, in order) or the same result: equal models, the same
Decimals (value and exponent), and JSON forms equal to the models' `model_dump(mode="json")`, key
order included.
"""
from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from fiscal.tax import TaxError, TaxTable, compute
from fiscal.tax.engine import compute_reference
from tax_factories import req

TABLE = TaxTable.load()
REFERENCE = {"nature": "COR", "code": "TESTFACTHQBAX2F3K22NMDYR"}
DATES = st.one_of(st.sampled_from([date(2024, 12, 4), date(2025, 12, 31), date(2026, 1, 1), date(2026, 3, 1)]),
                  st.dates(date(2023, 6, 1), date(2027, 12, 31)))
CENTS = st.one_of(st.integers(1, 10**5), st.integers(1, 10**9), st.integers(1, 10**17 - 1))
MILLIS = st.one_of(st.integers(1, 10**4), st.sampled_from([1, 5, 499, 500, 501]), st.integers(1, 10**12 - 1))


def money(cents: int, whole: bool = False) -> str:
    if whole and cents % 100 == 0:
        return str(cents // 100)  # "5000": a valid amount without decimals
    return format(Decimal(cents).scaleb(-2), "f")


def qty(millis: int) -> str:
    return format(Decimal(millis).scaleb(-3), "f")


@st.composite
def invoices(draw, plausible: bool):
    """Invoices the models accept. `plausible`: mostly groups and item types the rules take."""
    on = draw(DATES)
    period = TABLE.period_on(on) if TABLE.periods[0].start <= on else TABLE.periods[0]
    inv_type = draw(st.sampled_from(["FV", "FT", "EV", "ET", "FA", "EA"]))
    items = []
    for _ in range(draw(st.integers(1, 12))):
        if plausible and draw(st.integers(0, 29)):
            export = inv_type in ("EV", "ET", "EA")
            group = draw(st.sampled_from(sorted(g for g, r in period.groups.items() if r.on_export or not export)))
            item_type = draw(st.sampled_from(sorted(period.groups[group].item_types)))
        else:
            group = draw(st.sampled_from("ABCDEFGHIJKLMNOP"))
            item_type = draw(st.sampled_from(["BIE", "SER", "TAX"]))
        price = draw(st.integers(1, 10**9) if plausible and draw(st.integers(0, 4)) else CENTS)
        millis = draw(st.integers(1, 10**6) if plausible and draw(st.integers(0, 4)) else MILLIS)
        it = {"name": "ART", "type": item_type, "tax_group": group,
              "unit_price": money(price, draw(st.booleans())), "quantity": qty(millis)}
        ts = draw(st.sampled_from([None, None, "per_unit", "percent"]))
        if plausible and group in period.groups and not period.groups[group].specific_tax and draw(st.integers(0, 9)):
            ts = None
        if ts == "per_unit":
            it["specific_tax"] = {"per_unit": money(draw(st.one_of(
                st.integers(1, price), st.integers(price, min(20 * price, 10**17 - 1)), CENTS)))}
        elif ts == "percent":
            it["specific_tax"] = {"percent": format(Decimal(draw(st.integers(1, 10**6))).scaleb(-4), "f")}
        items.append(it)
    if plausible and any(i["tax_group"] == "N" for i in items) and draw(st.integers(0, 3)):
        items.append({"name": "REG", "type": "BIE", "tax_group": "M", "unit_price": "100.00"})
    fields: dict = {"type": inv_type, "price_mode": draw(st.sampled_from(["TTC", "HT"]))}
    comment = draw(st.sampled_from([None, "DGI/DRG/0001", "DGI/DRG/0002", " "]))
    if plausible and comment in (None, " ") and any(i["tax_group"] == "D" for i in items) and draw(st.integers(0, 3)):
        comment = "DGI/DRG/0003"
    if comment is not None:
        fields["comments"] = {"A": comment}
    if inv_type in ("FA", "EA"):
        fields["reference"] = REFERENCE
    if draw(st.booleans()):
        fields["usd_rate"] = {"rate": money(draw(st.one_of(st.integers(1, 10**6), CENTS))), "date": "2026-01-01"}
    payments = []
    for _ in range(draw(st.integers(0, 4))):
        payment = {"method": draw(st.sampled_from(["E", "V", "C", "M", "D", "A", "cash", "card"]))}
        if draw(st.booleans()):
            payment["amount"] = money(draw(st.one_of(st.integers(1, 10**6), CENTS)), draw(st.booleans()))
        payments.append(payment)
    fields["payments"] = payments
    return req(items, **fields), on


def outcome(fn, request, on):
    try:
        return fn(request, on)
    except TaxError as exc:
        return exc


def decimals(model) -> list[tuple]:
    """Every Decimal of a model, as (path, sign, digits, exponent): equality that sees exponents."""
    out: list[tuple] = []

    def walk(path: str, value) -> None:
        if isinstance(value, Decimal):
            out.append((path, value.as_tuple()))
        elif hasattr(value, "__pydantic_fields__"):
            for name in type(value).model_fields:
                walk(f"{path}.{name}", getattr(value, name))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{path}[{k}]", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{path}[{i}]", v)

    walk("", model)
    return out


def label(ref) -> None:
    """What the generated invoices exercise (pytest --hypothesis-show-statistics)."""
    try:
        event("accepted" if not isinstance(ref, TaxError) else
              "refused: " + " ".join(e["field"].split(".")[-1].split("[")[0] for e in ref.errors[:2]))
    except InvalidArgument:  # outside a hypothesis test
        pass


def assert_same(request, on) -> None:
    fast, ref = outcome(compute, request, on), outcome(compute_reference, request, on)
    label(ref)
    if isinstance(ref, TaxError):
        assert isinstance(fast, TaxError), f"fast path accepted what the reference refuses: {ref}"
        assert fast.errors == ref.errors
        assert str(fast) == str(ref)
        return
    assert not isinstance(fast, TaxError), f"fast path refused what the reference accepts: {fast}"
    assert fast._raw is not None, "an accepted invoice went the slow way"
    # The JSON forms first, built from the plain amounts (before the models are asked for).
    lines_json, totals_json = fast.lines_json, fast.totals_json
    ref_lines_json = [line.model_dump(mode="json") for line in ref.lines]
    ref_totals_json = ref.totals.model_dump(mode="json")
    assert json.dumps(lines_json) == json.dumps(ref_lines_json)
    assert json.dumps(totals_json) == json.dumps(ref_totals_json)
    # Then the models, lazily built from the same amounts.
    assert fast.lines == ref.lines and fast.totals == ref.totals and fast == ref
    assert decimals(fast.lines) == decimals(ref.lines)
    assert decimals(fast.totals) == decimals(ref.totals)
    assert json.dumps([line.model_dump(mode="json") for line in fast.lines]) == json.dumps(ref_lines_json)
    assert json.dumps(fast.totals.model_dump(mode="json")) == json.dumps(ref_totals_json)
    assert fast.lines_json is lines_json and fast.totals_json is totals_json  # built once


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invoices(plausible=True))
@example((req([{"name": "A", "type": "BIE", "tax_group": "B", "unit_price": "930.00", "quantity": "2"}],
              payments=[{"method": "M", "amount": "5000"}]), date(2026, 3, 1)))
@example((req([{"name": "A", "type": "BIE", "tax_group": "B", "unit_price": "0.01", "quantity": "0.001"}]),
          date(2026, 3, 1)))
@example((req([{"name": "A", "type": "BIE", "tax_group": "B", "unit_price": "999999999999999.99"},
               {"name": "B", "type": "BIE", "tax_group": "B", "unit_price": "1.00"}]), date(2026, 3, 1)))
def test_fast_path_matches_reference_on_plausible_invoices(case):
    assert_same(*case)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invoices(plausible=False))
def test_fast_path_matches_reference_on_any_invoice(case):
    assert_same(*case)


def test_reference_results_give_the_same_json_forms():
    """A TaxResult built from models (as compute_reference builds it) dumps them for the JSON forms."""
    request = req([{"name": "A", "type": "BIE", "tax_group": "B", "unit_price": "464.00"}],
                  payments=[{"method": "cash", "amount": "500"}])
    ref = compute_reference(request, date(2024, 12, 4))
    assert ref.lines_json == [line.model_dump(mode="json") for line in ref.lines]
    assert ref.totals_json == ref.totals.model_dump(mode="json")
    assert ref.totals_json["payments"] == [{"method": "E", "amount": "500.00"}]
    assert ref.totals_json["change"] == "36.00"
    assert compute(request, date(2024, 12, 4)).totals_json == ref.totals_json


def test_the_benchmark_invoice_takes_the_fast_path():
    from bench.workload import ten_item_invoice
    from fiscal.models import InvoiceRequest

    result = compute(InvoiceRequest.model_validate(ten_item_invoice("FAST-1")), date(2026, 3, 1))
    assert result._raw is not None
    assert_same(InvoiceRequest.model_validate(ten_item_invoice("FAST-1")), date(2026, 3, 1))
