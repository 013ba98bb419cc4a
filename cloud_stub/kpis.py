"""Daily figures per outlet (`kpi_days`), added up as the ledger grows, in the transaction that
appends the entries: the dashboard's KPIs over every outlet then read a row per outlet and day
instead of every ledger entry (10,000,000 of them). Same definitions as
`repository.kpi_days_from_ledger`, which fills the table for a ledger that existed before it.
"""
from __future__ import annotations

from datetime import datetime

from fiscal.models import CREDIT_TYPES

from .repository import Tx


class DayFigures:
    """The figures of the entries one transaction appends for one outlet, by UTC day of sealing."""

    def __init__(self, outlet_id: str, recorded_at: str):
        self.outlet_id = outlet_id
        self.recorded = datetime.fromisoformat(recorded_at)
        self.days: dict[str, list] = {}  # day -> [invoices, net sales, lag sum, lag max]

    def add(self, sealed_at: str, inv_type: str, total: str | None) -> None:
        """An entry that counts in the outlet's totals (not an unregistered device's)."""
        lag = (self.recorded - datetime.fromisoformat(sealed_at)).total_seconds()
        amount = float(total) if total else 0.0
        day = self.days.get(sealed_at[:10])
        if day is None:
            self.days[sealed_at[:10]] = [1, -amount if inv_type in CREDIT_TYPES else amount, lag, lag]
            return
        day[0] += 1
        day[1] += -amount if inv_type in CREDIT_TYPES else amount
        day[2] += lag
        day[3] = max(day[3], lag)

    def rows(self) -> list[tuple]:
        """(outlet_id, day, invoices, net_sales, lag_sum, lag_max) of each day, as `Tx.add_kpi_days` takes them."""
        return [(self.outlet_id, day, *figures) for day, figures in sorted(self.days.items())]

    def write(self, tx: Tx) -> None:
        if self.days:
            tx.add_kpi_days(self.rows())
            self.days = {}
