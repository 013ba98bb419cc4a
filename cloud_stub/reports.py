"""X and A reports from the cloud ledger, per outlet and period.

The figures come from `fiscal.reports`, the very code the agent's X/Z/A reports use, so
for the same sealed invoices the cloud and the agent print the same numbers. The cloud does not
close days: the equivalent of an agent's Z is the cloud X over that Z's period.
"""
from __future__ import annotations

import json

from fiscal.reports import a_report, aggregate

from .errors import Invalid
from .issuer import iso
from .ledger import period_bounds
from .registry import get_outlet

KINDS = ("x", "a")


def outlet_report(service, kind: str, outlet_id: str, start: str | None, end: str | None) -> dict:
    """`kind` x: totals (as the agent's X/Z `totals`); a: article lines (as the agent's A)."""
    if kind not in KINDS:
        raise Invalid("bad_parameter", "report kind is x or a")
    with service.store.read() as tx:
        outlet = get_outlet(tx, outlet_id)
        lo, hi = period_bounds(start, end, outlet["time_zone"])
        invoices = (json.loads(r["invoice"]) for r in tx.ledger_in_period(outlet_id, iso(lo), iso(hi)))
        head = {"kind": kind.upper(), "outlet_id": outlet_id, "merchant_nif": outlet["merchant_nif"],
                "from": lo.isoformat(), "to": hi.isoformat(), "source": "cloud-ledger"}
        if kind == "x":
            return {**head, "totals": aggregate(invoices)}
        return {**head, **a_report(invoices)}
