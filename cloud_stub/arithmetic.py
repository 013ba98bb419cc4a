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

from datetime import date
from typing import Any

from pydantic import ValidationError

from fiscal.models import InvoiceRequest
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
    """None when `lines` and `totals` are the engine's for `request` on `day`, else (reason, detail)."""
    try:
        model = InvoiceRequest.model_validate(request)
    except ValidationError as exc:
        first = validation_errors(exc)[0]
        return "invoice_refused", f"{first['field']}: {first['message']}"
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
