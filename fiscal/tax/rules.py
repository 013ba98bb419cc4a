"""Which items an invoice may carry: group exists on the date, item type, export, T.S., D and N.

All problems of an invoice are collected and reported together, each naming its field.
"""
from __future__ import annotations

from datetime import date

from ..models import InvoiceRequest
from .errors import TaxError
from .table import GroupRule, Period

EXPORT_TYPES = frozenset({"EV", "ET", "EA"})


def check_invoice(request: InvoiceRequest, period: Period, on: date) -> list[GroupRule]:
    """The group rule of each item; every problem found is raised in one TaxError."""
    groups = period.groups
    export = request.type in EXPORT_TYPES
    # The common case first: every item's group exists and takes it, no D and no N. Anything else
    # (a problem, or a group with an invoice-level rule) is decided by the full check below.
    rules: list[GroupRule] = []
    append = rules.append
    for item in request.items:
        rule = groups.get(item.tax_group)
        if (rule is None or item.type not in rule.item_types or (export and not rule.on_export)
                or (item.specific_tax is not None and not rule.specific_tax)
                or rule.kind in _INVOICE_LEVEL_KINDS):
            return _check_invoice(request, period, on)
        append(rule)
    return rules


# Kinds with a rule on the whole invoice: D needs comment A, N needs an M line.
_INVOICE_LEVEL_KINDS = frozenset({"derogation", "specific_vat"})


def _check_invoice(request: InvoiceRequest, period: Period, on: date) -> list[GroupRule]:
    """The group rule of each item; every problem found is raised in one TaxError."""
    errors: list[dict[str, str]] = []
    present: list[tuple[int, GroupRule]] = []
    export = request.type in EXPORT_TYPES

    def err(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    for i, item in enumerate(request.items):
        at = f"items[{i}]"
        rule = period.groups.get(item.tax_group)
        if rule is None:
            err(f"{at}.tax_group",
                f"tax group {item.tax_group} does not exist on {on.isoformat()} "
                f"(groups then: {''.join(sorted(period.groups))})")
            continue
        present.append((i, rule))
        if item.type not in rule.item_types:
            err(f"{at}.tax_group",
                f"group {item.tax_group} ({rule.description}) does not take item type {item.type}; "
                f"allowed: {', '.join(sorted(rule.item_types))}")
        if export and not rule.on_export:
            allowed = "".join(g for g, r in sorted(period.groups.items()) if r.on_export)
            err(f"{at}.tax_group",
                f"group {item.tax_group} is not allowed on an export invoice ({request.type}); "
                f"export sales go in group E (allowed: {allowed})")
        if item.specific_tax is not None and not rule.specific_tax:
            err(f"{at}.specific_tax",
                f"group {item.tax_group} ({rule.description}) takes no specific tax")

    if any(r.kind == "derogation" for _, r in present) and not request.comments.get("A", "").strip():
        first = next(i for i, r in present if r.kind == "derogation")
        err("comments.A",
            f"group D (items[{first}]) needs the reference of the DGI derogation document in comment line A")
    if not any(r.kind == "regulated" for _, r in present):
        for i, r in present:
            if r.kind == "specific_vat":
                err(f"items[{i}].tax_group",
                    "group N (specific VAT) goes with a regulated sale in group M on the same invoice")
    if errors:
        raise TaxError(errors)
    return [rule for _, rule in present]
