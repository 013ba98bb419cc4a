"""The effective-dated tax table (FACNO tax groups), loaded from `groups.json`.

The rates are data, not code: an invoice is taxed with the period in force at its date, and the
rates an MCF reports in C1h (TAXA..TAXP) are checked against that same period.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from ..models import TAX_GROUPS
from ..money import q2
from .errors import TaxError, TaxTableError

ITEM_TYPES = frozenset({"BIE", "SER", "TAX"})
# What a group does to the amounts; the engine only treats "specific_vat" (N) specially, every
# other kind is computed from its rate. The other kinds name the FACNO meaning for readers and
# for the invoice-level rules (D needs comment line A, N needs an M line).
KINDS = frozenset({
    "exempt", "taxable", "derogation", "export", "tax_credit", "deposit", "guarantee",
    "disbursement", "non_taxable_seller", "levy", "regulated", "specific_vat",
})
_GROUP_KEYS = {"rate", "label", "description", "vat_charged", "kind", "item_types", "on_export", "specific_tax"}
_PERIOD_KEYS = {"from", "to", "groups", "source"}


@dataclass(frozen=True)
class GroupRule:
    """One tax group in one period."""

    group: str
    rate: Decimal  # percent, two decimals
    label: str  # receipt label: "A-EX", "B", ...
    description: str
    vat_charged: bool
    kind: str
    item_types: frozenset[str]  # BIE / SER / TAX allowed in this group
    on_export: bool  # allowed on export invoices (EV, ET, EA)
    specific_tax: bool  # an item of this group may carry a T.S.


@dataclass(frozen=True)
class Period:
    """A tax table in force from `start` to `end` inclusive (`end` None: until further notice)."""

    start: date
    end: date | None
    groups: Mapping[str, GroupRule]
    source: str = ""

    def covers(self, d: date) -> bool:
        return self.start <= d and (self.end is None or d <= self.end)


class TaxTable:
    def __init__(self, periods: Sequence[Period]):
        if not periods:
            raise TaxTableError("the tax table has no period")
        ordered = sorted(periods, key=lambda p: p.start)
        for prev, nxt in zip(ordered, ordered[1:]):
            if prev.end is None:
                raise TaxTableError(f"period from {prev.start} is open-ended but another starts {nxt.start}")
            if nxt.start != prev.end + timedelta(days=1):
                raise TaxTableError(
                    f"periods must follow each other without gap or overlap: {prev.end} then {nxt.start}")
        self.periods: tuple[Period, ...] = tuple(ordered)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> "TaxTable":
        """The table shipped with the package (cached), or the one at `path`."""
        if path is None:
            return _default_table()
        return cls.from_data(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_data(cls, data: Any) -> "TaxTable":
        if not isinstance(data, list):
            raise TaxTableError("the tax table must be a JSON list of periods")
        return cls([_parse_period(i, p) for i, p in enumerate(data)])

    # -- queries ------------------------------------------------------------------------------

    def period_on(self, d: date) -> Period:
        for period in self.periods:
            if period.covers(d):
                return period
        raise TaxError.one("date", f"no tax table is in force on {d.isoformat()}")

    def group(self, group: str, d: date) -> GroupRule:
        period = self.period_on(d)
        try:
            return period.groups[group]
        except KeyError:
            raise TaxError.one(
                "tax_group", f"tax group {group!r} does not exist on {d.isoformat()}") from None

    def rate(self, group: str, d: date) -> Decimal:
        return self.group(group, d).rate

    def label(self, group: str, d: date | None = None) -> str:
        """The receipt label of a group (`A-EX`, `B`, ...), from the period of `d` or the latest."""
        if d is not None:
            return self.group(group, d).label
        for period in reversed(self.periods):
            if group in period.groups:
                return period.groups[group].label
        raise TaxError.one("tax_group", f"unknown tax group {group!r}")

    def check_device_rates(self, rates: Mapping[str, Decimal], d: date) -> list[str]:
        """Human-readable differences between the rates an MCF reports (C1h) and the table on `d`.

        A device reports all sixteen TAXA..TAXP; a group that does not exist on `d` is expected
        at 0.00 (the pre-2026 C1h example reports O and P as 0.00).
        """
        period = self.period_on(d)
        problems: list[str] = []
        for group in sorted(set(rates) - set(TAX_GROUPS)):
            problems.append(f"device reports a rate for unknown tax group {group!r}")
        for group in TAX_GROUPS:
            rule = period.groups.get(group)
            reported = rates.get(group)
            if reported is not None and not isinstance(reported, Decimal):
                try:
                    reported = Decimal(str(reported))
                except InvalidOperation:
                    problems.append(f"group {group}: device reports {rates[group]!r}, not a rate")
                    continue
            if rule is None:
                if reported is not None and reported != 0:
                    problems.append(
                        f"group {group}: device reports {_pct(reported)} but the group does not "
                        f"exist on {d.isoformat()}")
                continue
            if reported is None:
                problems.append(f"group {group}: device reports no rate, table says {_pct(rule.rate)}")
            elif reported != rule.rate:
                problems.append(
                    f"group {group}: device reports {_pct(reported)}, table in force on "
                    f"{d.isoformat()} says {_pct(rule.rate)}")
        return problems


def _pct(rate: Decimal) -> str:
    return f"{q2(rate)} %"


@lru_cache(maxsize=1)
def _default_table() -> TaxTable:
    text = resources.files(__package__).joinpath("groups.json").read_text(encoding="utf-8")
    return TaxTable.from_data(json.loads(text))


def _parse_date(value: Any, where: str) -> date:
    if not isinstance(value, str):
        raise TaxTableError(f"{where}: expected a YYYY-MM-DD string")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise TaxTableError(f"{where}: {exc}") from None


def _parse_period(index: int, raw: Any) -> Period:
    where = f"period[{index}]"
    if not isinstance(raw, dict):
        raise TaxTableError(f"{where}: expected an object")
    unknown = set(raw) - _PERIOD_KEYS
    if unknown or not {"from", "to", "groups"} <= set(raw):
        raise TaxTableError(f"{where}: keys must be {sorted(_PERIOD_KEYS)} (got {sorted(raw)})")
    start = _parse_date(raw["from"], f"{where}.from")
    end = None if raw["to"] is None else _parse_date(raw["to"], f"{where}.to")
    if end is not None and end < start:
        raise TaxTableError(f"{where}: ends before it starts")
    if not isinstance(raw["groups"], dict) or not raw["groups"]:
        raise TaxTableError(f"{where}.groups: expected a non-empty object")
    groups = {g: _parse_group(f"{where}.groups.{g}", g, v) for g, v in sorted(raw["groups"].items())}
    return Period(start, end, MappingProxyType(groups), str(raw.get("source", "")))


def _parse_group(where: str, group: str, raw: Any) -> GroupRule:
    if group not in TAX_GROUPS:
        raise TaxTableError(f"{where}: tax groups are A-P")
    if not isinstance(raw, dict) or set(raw) != _GROUP_KEYS:
        raise TaxTableError(f"{where}: keys must be exactly {sorted(_GROUP_KEYS)}")
    try:
        rate = Decimal(raw["rate"]) if isinstance(raw["rate"], str) else None
    except InvalidOperation:
        rate = None
    if rate is None or not rate.is_finite() or not (0 <= rate < 100) or rate != q2(rate):
        raise TaxTableError(f"{where}.rate: a decimal string in [0, 100) with at most two decimals")
    kind = raw["kind"]
    if kind not in KINDS:
        raise TaxTableError(f"{where}.kind: one of {sorted(KINDS)}")
    if not all(isinstance(raw[k], bool) for k in ("vat_charged", "on_export", "specific_tax")):
        raise TaxTableError(f"{where}: vat_charged, on_export and specific_tax are booleans")
    # N charges VAT without a percentage: the whole line is the specific VAT.
    if raw["vat_charged"] != (rate > 0 or kind == "specific_vat"):
        raise TaxTableError(f"{where}: vat_charged must be true exactly when the rate is positive (or for N)")
    if kind == "specific_vat" and rate != 0:
        raise TaxTableError(f"{where}: a specific-VAT group carries no rate")
    types = raw["item_types"]
    if not isinstance(types, list) or not types or not set(types) <= ITEM_TYPES:
        raise TaxTableError(f"{where}.item_types: a non-empty list of BIE, SER, TAX")
    for key in ("label", "description"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise TaxTableError(f"{where}.{key}: a non-empty string")
    return GroupRule(
        group=group, rate=q2(rate), label=raw["label"], description=raw["description"],
        vat_charged=raw["vat_charged"], kind=kind, item_types=frozenset(types),
        on_export=raw["on_export"], specific_tax=raw["specific_tax"],
    )
