"""The cloud trusts no agent's arithmetic: an uploaded invoice recomputed by the shared tax engine.

`problem(...)` rebuilds the invoice's request (what a POS sent: items, price mode, type,
payments as settled, ...) and computes it with `fiscal.tax.compute` and the tax table in force on
the invoice's date (its timestamp's own calendar day, as the sealer's clock showed it). Every line,
every group figure and every total must be exactly what the invoice says. A pure function of the
invoice: it runs in the verifier's workers beside the other per-invoice checks (checks.py).

The first difference found is the answer, as (reason, detail):

- `invoice_refused`: the invoice is not a valid request, or the tax rules refuse it on that date;
- `lines_mismatch`: a line's amounts are not the engine's;
- `groups_mismatch`: a tax group's figures (or the set of groups) are not the engine's;
- `totals_mismatch`: a total (total, VAT, specific tax, USD equivalent, payments, paid, change).
"""
from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from fiscal.models import CREDIT_TYPES, SealedRequest
from fiscal.money import parse_amount, parse_quantity
from fiscal.models import MAX_ITEMS as _MAX_ITEMS
from fiscal.runtime.problems import validation_errors
from fiscal.tax import TaxError, TaxTable, compute

# The request's members as a sealed invoice carries them (payments live in its totals).
REQUEST_FIELDS = ("request_id", "type", "price_mode", "invoice_number", "pos_terminal_id", "operator",
                  "client", "items", "comments", "reference", "usd_rate")

_table: TaxTable | None = None


def _tax_table() -> TaxTable:
    global _table  # loaded once per process (it is read-only data)
    if _table is None:
        _table = TaxTable.load()
    return _table


def request_of(invoice: dict) -> dict[str, Any]:
    """The request a sealed invoice was made from (JSON values, not validated)."""
    request = {k: invoice[k] for k in REQUEST_FIELDS if k in invoice}
    totals = invoice.get("totals")
    # The settled payments: given back to the engine as they are, they settle to themselves.
    request["payments"] = totals.get("payments", []) if isinstance(totals, dict) else []
    return request


def problem(request: dict[str, Any], day: date, lines: Any, totals: Any) -> tuple[str, str] | None:
    """None when `lines` and `totals` are the engine's for `request` on `day`, else (reason, detail).

    On the first day of a new tax table, the previous day's table is accepted too: a sealer computes
    the amounts a moment before it stamps the invoice, and that moment may fall before midnight.
    """
    try:
        model = SealedRequest.model_validate(request)
    except ValidationError as exc:
        first = validation_errors(exc)[0]
        return "invoice_refused", f"{first['field']}: {first['message']}"
    found = _verdict(model, day, lines, totals)
    if found is not None and _table_changed_on(day):
        if _verdict(model, day - timedelta(days=1), lines, totals) is None:
            return None
    return found


def _table_changed_on(day: date) -> bool:
    table = _tax_table()
    try:
        return table.period_on(day) is not table.period_on(day - timedelta(days=1))
    except TaxError:  # no table on one of the days: nothing to fall back on
        return False


def _verdict(model: SealedRequest, day: date, lines: Any, totals: Any) -> tuple[str, str] | None:
    try:
        result = compute(model, day, _tax_table())
    except TaxError as exc:
        errors = exc.errors or [{"field": "items", "message": str(exc)}]
        return "invoice_refused", "; ".join(f"{e['field']}: {e['message']}" for e in errors) + f" (on {day})"
    expected_lines = result.lines_json
    if lines != expected_lines:
        return "lines_mismatch", _lines_detail(lines, expected_lines)
    expected = result.totals_json
    if not isinstance(totals, dict):
        return "totals_mismatch", "the invoice has no totals"
    if totals.get("by_group") != expected["by_group"]:
        return "groups_mismatch", _groups_detail(totals.get("by_group"), expected["by_group"])
    for key, value in expected.items():
        if key != "by_group" and totals.get(key) != value:
            return "totals_mismatch", f"totals.{key} is {_show(totals.get(key))}; the tax engine gives {_show(value)}"
    if totals.keys() - expected.keys():
        return "totals_mismatch", f"totals has unknown members: {sorted(totals.keys() - expected.keys())}"
    return None


def _show(value: Any) -> str:
    return "missing" if value is None else repr(value)


def _lines_detail(lines: Any, expected: list[dict]) -> str:
    if not isinstance(lines, list) or len(lines) != len(expected):
        count = len(lines) if isinstance(lines, list) else "no"
        return f"{count} line(s) for {len(expected)} item(s)"
    for i, (line, want) in enumerate(zip(lines, expected)):
        if line != want:
            diffs = [f"{k} {_show(line.get(k) if isinstance(line, dict) else None)} (engine: {v})"
                     for k, v in want.items() if not isinstance(line, dict) or line.get(k) != v]
            return f"lines[{i}]: " + (", ".join(diffs) or "unknown members")
    return "the lines differ"  # not reached: lines != expected means one of them differs


def _groups_detail(groups: Any, expected: dict[str, dict]) -> str:
    if not isinstance(groups, dict) or groups.keys() != expected.keys():
        have = sorted(groups) if isinstance(groups, dict) else "none"
        return f"tax groups {have}; the tax engine gives {sorted(expected)}"
    for g, want in expected.items():
        if groups[g] != want:
            diffs = [f"{k} {_show(groups[g].get(k) if isinstance(groups[g], dict) else None)} (engine: {v})"
                     for k, v in want.items() if not isinstance(groups[g], dict) or groups[g].get(k) != v]
            return f"totals.by_group.{g}: " + (", ".join(diffs) or "unknown members")
    return "the groups differ"  # not reached


# -- the quick form, for the text path ---------------------------------------------------------
#
# Validating the request model costs about as much as the computation itself (≈ 30 µs for ten
# items). The text path (textpath.py) has already proved, by its regular expression, everything
# the model would check of its items (plain items: no specific tax, no price change), so it hands
# the engine plain attribute objects holding the very Decimals the model would hold, and compares
# canonical texts instead of parsed values. It only ever answers "the amounts are the engine's":
# any doubt, and any difference, goes to `problem` for the verdict and its detail, so both paths
# give the same answer (tests/cloud/test_cloud_textpath.py compares them).


def adds_up_plain(inv_type: str, price_mode: str, items: list[tuple[str, str, str, str]],
                  payments: list[tuple[str, str]], has_reference: bool, day: date, lines_text: str,
                  totals_text: str) -> bool:
    """True when the engine gives exactly `lines_text` and `totals_text` (canonical JSON) for these
    plain items `(quantity, tax_group, type, unit_price)` and settled payments `(amount, method)`;
    False means "not sure": ask `problem`."""
    if (inv_type in CREDIT_TYPES) != has_reference or not 1 <= len(items) <= _MAX_ITEMS or len(payments) > 16:
        return False  # the model refuses it: `problem` says how
    plain_items = []
    for quantity, group, item_type, price in items:
        plain_items.append(SimpleNamespace(quantity=parse_quantity(quantity), tax_group=group, type=item_type,
                                           unit_price=parse_amount(price), specific_tax=None))
    plain_payments = []
    for amount, method in payments:
        value = parse_amount(amount)
        if value <= 0:
            return False
        plain_payments.append(SimpleNamespace(method=method, amount=value))
    request = SimpleNamespace(type=inv_type, price_mode=price_mode, items=plain_items, payments=plain_payments,
                              comments={}, usd_rate=None, reference=None)
    try:
        result = compute(request, day, _tax_table())  # type: ignore[arg-type]
    except TaxError:
        return False
    return _lines_text(result.lines_json) == lines_text and _totals_text(result.totals_json) == totals_text


def _lines_text(lines: list[dict]) -> str:
    return "[" + ",".join(f'{{"ht":"{x["ht"]}","specific_tax":"{x["specific_tax"]}","total":"{x["total"]}",'
                          f'"vat":"{x["vat"]}"}}' for x in lines) + "]"


def _totals_text(t: dict) -> str:
    groups = ",".join(f'"{g}":{{"ht":"{x["ht"]}","rate":"{x["rate"]}","total":"{x["total"]}","vat":"{x["vat"]}"}}'
                      for g, x in sorted(t["by_group"].items()))
    payments = ",".join(f'{{"amount":"{p["amount"]}","method":"{p["method"]}"}}' for p in t["payments"])
    usd = "null" if t["usd_equivalent"] is None else f'"{t["usd_equivalent"]}"'
    return (f'{{"by_group":{{{groups}}},"change":"{t["change"]}","paid":"{t["paid"]}","payments":[{payments}],'
            f'"specific_tax":"{t["specific_tax"]}","total":"{t["total"]}","usd_equivalent":{usd},"vat":"{t["vat"]}"}}')
