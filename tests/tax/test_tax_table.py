"""The effective-dated tax table: loading, validation, periods, device rates."""
from __future__ import annotations

import copy
import json
from datetime import date
from decimal import Decimal
from importlib import resources

import pytest

from fiscal.models import TAX_GROUPS
from fiscal.tax import TaxError, TaxTable, TaxTableError, compute
from tax_factories import item, req

# The rates of the protocol's C1h example (a 2025 device), TAXA..TAXP.
C1H_EXAMPLE = "0.00,16.00,8.00,0.00,0.00,16.00,8.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00,0.00"


def device_rates(text: str = C1H_EXAMPLE) -> dict[str, Decimal]:
    return {g: Decimal(v.strip()) for g, v in zip(TAX_GROUPS, text.split(","), strict=True)}


def raw_table() -> list:
    return json.loads(resources.files("fiscal.tax").joinpath("groups.json").read_text(encoding="utf-8"))


def test_load_is_cached():
    assert TaxTable.load() is TaxTable.load()


def test_load_from_path_gives_the_same_table(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(raw_table()), encoding="utf-8")
    table = TaxTable.load(path)
    assert table is not TaxTable.load()
    assert [p.start for p in table.periods] == [p.start for p in TaxTable.load().periods]


def test_periods():
    table = TaxTable.load()
    assert table.period_on(date(2025, 12, 31)).start == date(2024, 1, 1)
    assert table.period_on(date(2026, 1, 1)).start == date(2026, 1, 1)
    assert table.period_on(date(2099, 1, 1)).end is None
    assert "".join(table.period_on(date(2025, 1, 1)).groups) == "ABCDEFGHIJKLMN"
    assert "".join(table.period_on(date(2026, 1, 1)).groups) == "ABCDEFGHIJKLMNOP"


def test_no_table_before_first_period():
    with pytest.raises(TaxError) as exc:
        TaxTable.load().period_on(date(2023, 12, 31))
    assert exc.value.fields == ["date"]
    with pytest.raises(TaxError) as exc:
        compute(req([item("B", "10.00")]), date(2023, 12, 31))
    assert exc.value.fields == ["date"]


@pytest.mark.parametrize("group, on, rate", [
    ("A", date(2025, 1, 1), "0.00"), ("B", date(2025, 1, 1), "16.00"),
    ("C", date(2025, 12, 31), "8.00"), ("G", date(2025, 12, 31), "8.00"),
    ("C", date(2026, 1, 1), "5.00"), ("G", date(2026, 1, 1), "5.00"),
    ("F", date(2026, 1, 1), "16.00"), ("O", date(2026, 1, 1), "1.00"), ("P", date(2026, 1, 1), "1.00"),
    ("N", date(2026, 1, 1), "0.00"), ("E", date(2026, 1, 1), "0.00"),
])
def test_rates(group, on, rate):
    assert str(TaxTable.load().rate(group, on)) == rate


@pytest.mark.parametrize("group", ["O", "P"])
def test_o_and_p_do_not_exist_before_2026(group):
    with pytest.raises(TaxError) as exc:
        TaxTable.load().rate(group, date(2025, 12, 31))
    assert exc.value.fields == ["tax_group"]


def test_labels():
    table = TaxTable.load()
    assert table.label("A") == "A-EX"
    assert [table.label(g) for g in "BCDEFGHIJKLMNOP"] == list("BCDEFGHIJKLMNOP")
    with pytest.raises(TaxError):
        table.label("O", date(2025, 1, 1))


def test_vat_charging_groups():
    groups = TaxTable.load().period_on(date(2026, 1, 1)).groups
    assert {g for g, r in groups.items() if r.rate > 0} == set("BCFGOP")
    assert {g for g, r in groups.items() if r.vat_charged} == set("BCFGOPN")


# check_device_rates ----------------------------------------------------------------------------

def test_device_rates_match_2025_table():
    assert TaxTable.load().check_device_rates(device_rates(), date(2025, 3, 1)) == []


def test_2025_device_rates_against_2026_table():
    problems = TaxTable.load().check_device_rates(device_rates(), date(2026, 3, 1))
    assert problems == [
        "group C: device reports 8.00 %, table in force on 2026-03-01 says 5.00 %",
        "group G: device reports 8.00 %, table in force on 2026-03-01 says 5.00 %",
        "group O: device reports 0.00 %, table in force on 2026-03-01 says 1.00 %",
        "group P: device reports 0.00 %, table in force on 2026-03-01 says 1.00 %",
    ]


def test_updated_device_matches_2026_table():
    rates = device_rates("0,16,5,0,0,16,5,0,0,0,0,0,0,0,1,1")
    assert TaxTable.load().check_device_rates(rates, date(2026, 3, 1)) == []


def test_device_rates_missing_unknown_and_nonexistent_group():
    rates = device_rates("0,16,8,0,0,16,8,0,0,0,0,0,0,0,1.00,0")
    del rates["B"]
    rates["Z"] = Decimal("3")
    problems = TaxTable.load().check_device_rates(rates, date(2025, 3, 1))
    assert problems == [
        "device reports a rate for unknown tax group 'Z'",
        "group B: device reports no rate, table says 16.00 %",
        "group O: device reports 1.00 % but the group does not exist on 2025-03-01",
    ]


# loader validation -----------------------------------------------------------------------------

def _mutated(mutate) -> list:
    data = copy.deepcopy(raw_table())
    mutate(data)
    return data


@pytest.mark.parametrize("mutate", [
    lambda d: d[1].__setitem__("from", "2026-01-02"),  # gap
    lambda d: d[1].__setitem__("from", "2025-12-31"),  # overlap
    lambda d: d[0].__setitem__("to", None),  # two open-ended periods
    lambda d: d[0]["groups"]["B"].__setitem__("rate", "16.001"),
    lambda d: d[0]["groups"]["B"].__setitem__("rate", 16),
    lambda d: d[0]["groups"]["B"].__setitem__("rate", "NaN"),
    lambda d: d[0]["groups"]["B"].__setitem__("rate", "100.00"),
    lambda d: d[0]["groups"]["B"].__setitem__("vat_charged", False),
    lambda d: d[0]["groups"]["B"].__setitem__("kind", "luxury"),
    lambda d: d[0]["groups"]["B"].__setitem__("item_types", ["GOODS"]),
    lambda d: d[0]["groups"]["B"].__setitem__("extra", 1),
    lambda d: d[0]["groups"]["N"].__setitem__("rate", "10.00"),
    lambda d: d[0]["groups"].__setitem__("Q", d[0]["groups"]["A"]),
    lambda d: d[0].__setitem__("from", "2024-13-01"),
    lambda d: d.clear(),
], ids=["gap", "overlap", "two-open", "3-decimals", "number", "nan", "100", "vat-flag", "kind",
        "item-type", "unknown-key", "n-rate", "group-q", "bad-date", "empty"])
def test_invalid_tables_refused(mutate):
    with pytest.raises(TaxTableError):
        TaxTable.from_data(_mutated(mutate))


def test_shipped_table_is_valid_and_complete():
    table = TaxTable.from_data(raw_table())
    latest = table.period_on(date(2026, 2, 1))
    assert set(latest.groups) == set(TAX_GROUPS)
    for rule in latest.groups.values():
        assert rule.description and rule.label
