"""One outlet: its state at a glance, its ledger (keyset pages), a flag and what caused it, and
its X and A reports as an auditor reads them (HTML, and PDF in the layout the agent prints)."""
from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from aiohttp import web

from fiscal.protocol import MODES
from fiscal.report_print import report_pdf

from .. import audit, reports
from ..errors import NotFound
from ..issuer import iso, latest
from ..ledger import entry_state, period_bounds
from ..reconcile import rejection_view
from ..registry import device_view
from .access import Viewer
from .render import download, outlet_in_scope, page, service
from .views_common import (choice_param, credential_figures, int_param, seconds_between,
                           text_param)

INVOICE_TYPES = ("FV", "FT", "FA", "EV", "ET", "EA")
LEDGER_PAGE = 50
A_REPORT_LINES = 1000  # an A report over a long period is for the API's JSON or the PDF

# What each flag means for the person reading it (docs/cloud-api.md, "Gaps and flags").
FLAG_MEANINGS = {
    "gap": "Numbers of a delegated credential never reached the cloud: the agent skipped them, or invoices "
           "were lost before upload.",
    "unregistered_device": "Invoices sealed by an MCF the operator has not bound to this outlet: stored apart, "
                           "out of the outlet's totals.",
    "device_review": "A device an agent bound before operators did: confirm it (bind) or unbind it.",
    "double_seal": "One sale holds two fiscal numbers: the cloud sealed it, its answer was lost, and the agent "
                   "sealed it again.",
    "invoice_refused": "An invoice under a valid seal that the tax rules refuse.",
    "lines_mismatch": "An invoice under a valid seal whose line amounts are not the tax engine's.",
    "groups_mismatch": "An invoice under a valid seal whose tax groups are not the tax engine's.",
    "totals_mismatch": "An invoice under a valid seal whose totals are not the tax engine's.",
    "unknown_original": "A credit note whose original invoice is not in this outlet's ledger.",
    "original_is_credit_note": "A credit note that corrects another credit note.",
    "credit_exceeds_original": "Credit notes adding up to more than their original invoice.",
}


def _scoped(tx, viewer: Viewer, outlet_id: str) -> dict:
    return outlet_in_scope(tx.outlet(outlet_id), viewer, outlet_id)


def _entry_view(r: dict) -> dict:
    invoice = json.loads(r["invoice"])
    return {"seq": r["seq"], "recorded_at": r["recorded_at"], "sealed_at": r["sealed_at"], "mode": r["mode"],
            "type": r["inv_type"], "authority_id": r["authority_id"], "fiscal_number": r["fiscal_number"],
            "state": entry_state(r["mode"], r["state"]), "invoice_id": invoice.get("id"),
            "invoice_number": invoice.get("invoice_number"), "total": (invoice.get("totals") or {}).get("total"),
            "invoice_hash": r["invoice_hash"]}


def _flag_view(row: dict) -> dict:
    view = audit.flag_view(row)
    view["meaning"] = FLAG_MEANINGS.get(row["reason"], "An invoice the cloud refused or holds apart.")
    return view


def outlet_data(store, viewer: Viewer, outlet_id: str, now: datetime) -> dict:
    with store.read() as tx:
        outlet = _scoped(tx, viewer, outlet_id)
        last = tx.ledger_last(outlet_id)
        credentials = tx.dash_credentials(outlet_id, 10)
        devices = tx.devices(outlet_id)
        flags = tx.dash_flags(outlet_id, 50)
        rejections = tx.rejections(outlet_id, 20)
        recent = tx.dash_ledger(outlet_id, before=None, after=None, limit=10)
        dgi = tx.dgi_state_counts(outlet_id)
        queue = tx.dgi_queue(outlet_id)
    device_rows = [device_view(d) for d in devices]
    return {
        "outlet": {"id": outlet["id"], "name": outlet["name"], "merchant_nif": outlet["merchant_nif"],
                   "merchant_name": outlet["merchant_name"], "time_zone": outlet["time_zone"], "isf": outlet["isf"]},
        "generated_at": iso(now),
        "entries": last["seq"] if last else 0,
        "last_seen": latest(last and last["recorded_at"], credentials[0]["issued_at"] if credentials else None,
                            *(d["last_seen"] for d in device_rows if d["bound"])),
        "sync_lag_seconds": seconds_between(last["recorded_at"], last["sealed_at"]) if last else None,
        "credentials": [credential_figures(c, now) for c in credentials],
        "devices": device_rows,
        "flags": [_flag_view(f) for f in flags],
        "rejections": [rejection_view(r) for r in rejections],
        "recent": [_entry_view(r) for r in recent],
        "dgi": {"counts": dgi, "failures": queue["failures"] if queue else 0,
                "last_error": queue["last_error"] if queue else None},
    }


@page("outlet.html")
async def outlet_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    return await svc.call(outlet_data, svc.store, viewer, request.match_info["outlet_id"], svc.now())


def ledger_data(store, viewer: Viewer, outlet_id: str, *, before: int | None, after: int | None,
                inv_type: str | None, mode: str | None, authority_id: str | None, start: str | None,
                end: str | None) -> dict:
    with store.read() as tx:
        outlet = _scoped(tx, viewer, outlet_id)
        lo = hi = None
        if start or end:
            lo_dt, hi_dt = period_bounds(start, end, outlet["time_zone"])
            lo, hi = iso(lo_dt), iso(hi_dt)
        rows = tx.dash_ledger(outlet_id, before=before, after=after, limit=LEDGER_PAGE + 1, inv_type=inv_type,
                              mode=mode, authority_id=authority_id, start=lo, end=hi)
    if after is not None:  # the page above `after`, read upwards
        more_newer, more_older = len(rows) > LEDGER_PAGE, True
        rows = rows[-LEDGER_PAGE:]
    else:
        more_newer, more_older = before is not None, len(rows) > LEDGER_PAGE
        rows = rows[:LEDGER_PAGE]
    entries = [_entry_view(r) for r in rows]
    return {"outlet_id": outlet_id, "entries": entries,
            "filters": {"type": inv_type, "mode": mode, "authority": authority_id, "from": start, "to": end},
            # Keyset cursors: `before` pages to older entries, `after` to newer ones.
            "older_before": entries[-1]["seq"] if more_older and entries else None,
            "newer_after": entries[0]["seq"] if more_newer and entries else None}


@page("ledger.html")
async def ledger_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    return await svc.call(
        ledger_data, svc.store, viewer, request.match_info["outlet_id"],
        before=int_param(request, "before", 1, 2**62), after=int_param(request, "after", 0, 2**62),
        inv_type=choice_param(request, "type", INVOICE_TYPES), mode=choice_param(request, "mode", MODES),
        authority_id=text_param(request, "authority"), start=text_param(request, "from", 32),
        end=text_param(request, "to", 32))


def flag_data(store, viewer: Viewer, outlet_id: str, flag_id: int, now: datetime) -> dict:
    with store.read() as tx:
        _scoped(tx, viewer, outlet_id)
        row = tx.flag(flag_id)
        if row is None or row["outlet_id"] != outlet_id:
            raise NotFound("flag_not_found", f"no flag {flag_id} for outlet {outlet_id}")
        credential = tx.dash_credential(row["credential_id"]) if row["credential_id"] else None
        authority = row.get("authority_id") or row["credential_id"]
        rejections = tx.rejections_of_authority(outlet_id, authority, 20) if authority else []
    return {"outlet_id": outlet_id, "flag": _flag_view(row), "authority_id": authority,
            "credential": credential_figures(credential, now) if credential else None,
            "rejections": [rejection_view(r) for r in rejections]}


@page("flag.html")
async def flag_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    flag_id = request.match_info["flag_id"]
    return await svc.call(flag_data, svc.store, viewer, request.match_info["outlet_id"], int(flag_id), svc.now())


def reports_data(svc, viewer: Viewer, outlet_id: str, start: str | None, end: str | None) -> dict:
    with svc.store.read() as tx:
        outlet = _scoped(tx, viewer, outlet_id)
    if not start and not end:  # today, in the outlet's zone
        start = end = svc.now().astimezone(ZoneInfo(outlet["time_zone"])).date().isoformat()
    x = reports.outlet_report(svc, "x", outlet_id, start, end)
    a = reports.outlet_report(svc, "a", outlet_id, start, end)
    truncated = len(a["lines"]) > A_REPORT_LINES
    a["lines"] = a["lines"][:A_REPORT_LINES]
    return {"outlet_id": outlet_id, "from": start, "to": end, "x": x, "a": {**a, "truncated": truncated}}


@page("reports.html")
async def reports_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    return await svc.call(reports_data, svc, viewer, request.match_info["outlet_id"],
                          text_param(request, "from", 32), text_param(request, "to", 32))


def report_for_print(svc, viewer: Viewer, outlet_id: str, kind: str, start: str | None, end: str | None) -> dict:
    with svc.store.read() as tx:
        outlet = _scoped(tx, viewer, outlet_id)
        merchant = tx.merchant(outlet["merchant_nif"])
    if not start and not end:
        start = end = svc.now().astimezone(ZoneInfo(outlet["time_zone"])).date().isoformat()
    body = reports.outlet_report(svc, kind, outlet_id, start, end)
    return {**body, "merchant_name": (merchant or {}).get("name", ""), "isf": outlet.get("isf") or ""}


@download
async def report_pdf_file(request: web.Request, viewer: Viewer) -> web.Response:
    """`reports/x.pdf` or `reports/a.pdf` over `from`..`to` (the page's period; today by default)."""
    svc = service(request)
    outlet_id, kind = request.match_info["outlet_id"], request.match_info["kind"]
    body = await svc.call(report_for_print, svc, viewer, outlet_id, kind,
                          text_param(request, "from", 32), text_param(request, "to", 32))
    pdf = await svc.call(report_pdf, body)  # fpdf is CPU work: off the event loop
    name = f"{outlet_id}-{kind.upper()}-{body['from'][:10]}-{body['to'][:10]}.pdf"
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})
