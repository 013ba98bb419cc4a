"""KPIs over time, drawn as SVG on the server: net sales and invoices per day, sync lag (how late
invoices reach the cloud after they are sealed), rejections and flags raised per day. Days are
UTC days. Sales and lag come from `kpi_days` (cloud_stub/kpis.py: a row per outlet and day), so
the KPIs of 10,000 outlets over 10,000,000 entries read 300,000 index entries, not the ledger."""
from __future__ import annotations

from datetime import datetime, timedelta

from aiohttp import web

from ..issuer import iso
from .access import Viewer
from .charts import Series, chart
from .render import outlet_in_scope, page, service
from .views_common import int_param, text_param


def kpi_data(store, viewer: Viewer, outlet_id: str | None, days: int, now: datetime) -> dict:
    first = (now - timedelta(days=days - 1)).date()
    since = first.isoformat()
    merchant = None if viewer.operator else viewer.merchant_nif
    with store.read() as tx:
        if outlet_id is not None:
            outlet_in_scope(tx.outlet(outlet_id), viewer, outlet_id)
            merchant = None
        ledger = {r["day"]: r for r in tx.dash_ledger_days(since, outlet_id, merchant)}
        rejections = {r["day"]: r["n"] for r in tx.dash_event_days("rejections", "received_at", since, outlet_id,
                                                                    merchant)}
        flags = {r["day"]: r["n"] for r in tx.dash_event_days("flags", "created_at", since, outlet_id, merchant)}
    series = []
    for k in range(days):
        day = (first + timedelta(days=k)).isoformat()
        row = ledger.get(day) or {}
        series.append({"day": day, "invoices": int(row.get("invoices") or 0),  # PostgreSQL sums as numeric
                       "net_sales": round(float(row.get("net_sales") or 0), 2),
                       "sync_lag_avg_s": round(float(row.get("lag_avg") or 0), 1),
                       "sync_lag_max_s": round(float(row.get("lag_max") or 0), 1),
                       "rejections": rejections.get(day, 0), "flags": flags.get(day, 0)})
    return {"outlet_id": outlet_id, "days": days, "from": since, "generated_at": iso(now), "series": series}


def charts(data: dict) -> list:
    days = [d["day"] for d in data["series"]]

    def col(key: str) -> list[float]:
        return [d[key] for d in data["series"]]

    return [
        chart("Net sales per day", days, [Series("net sales", col("net_sales"), "s1")]),
        chart("Invoices per day", days, [Series("invoices", col("invoices"), "s2")]),
        chart("Sync lag (minutes from sealing to the cloud)", days,
              [Series("average", [v / 60 for v in col("sync_lag_avg_s")], "s1"),
               Series("max", [v / 60 for v in col("sync_lag_max_s")], "s3")], kind="lines", unit=" min"),
        chart("Rejections and flags per day", days,
              [Series("rejections", col("rejections"), "s3"), Series("flags", col("flags"), "s4")]),
    ]


@page("kpis.html")
async def kpis_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    days = int_param(request, "days", 1, 366) or 30
    return await svc.call(kpi_data, svc.store, viewer, text_param(request, "outlet", 40), days, svc.now())
