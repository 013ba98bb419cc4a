"""The outlets page: every outlet the viewer may see, a page at a time (keyset on the id)."""
from __future__ import annotations

from aiohttp import web

from ..issuer import iso, last_seen
from ..registry import OUTLET_ID
from ..errors import Invalid
from .access import Viewer
from .render import page, service
from .views_common import credential_figures, seconds_between, text_param

PAGE = 50


def outlets_data(store, viewer: Viewer, *, search: str | None, flagged: bool, after: str | None,
                 before: str | None, now) -> dict:
    scope = None if viewer.operator else viewer.merchant_nif
    with store.read() as tx:
        rows = tx.dash_outlets(merchant_nif=scope, search=search, flagged=flagged, after=after, before=before,
                               limit=PAGE + 1)
        total = tx.dash_outlet_count(merchant_nif=scope, search=search, flagged=flagged)
    if before is not None:
        has_prev, has_next = len(rows) > PAGE, True
        rows = rows[-PAGE:]
    else:
        has_prev, has_next = after is not None, len(rows) > PAGE
        rows = rows[:PAGE]
    outlets = [_outlet_row(r, now) for r in rows]
    return {"outlets": outlets, "total": total, "generated_at": iso(now),
            "filters": {"q": search, "flagged": flagged},
            "next_after": outlets[-1]["id"] if has_next and outlets else None,
            "prev_before": outlets[0]["id"] if has_prev and outlets else None}


def _outlet_row(r: dict, now) -> dict:
    credential = None
    if r["credential_id"] is not None:
        credential = credential_figures({"id": r["credential_id"], "block_start": r["block_start"],
                                         "block_end": r["block_end"], "not_after": r["not_after"],
                                         "closed_at": r["closed_at"], "last_used": r["credential_last_used"]}, now)
    return {
        "id": r["id"], "name": r["name"], "merchant_nif": r["merchant_nif"], "merchant_name": r["merchant_name"],
        # The agent's last upload, credential or heartbeat, or an MCF's last contact.
        "last_seen": last_seen(r),
        "entries": r["entries"] or 0,
        # How late the newest entry reached the cloud after it was sealed.
        "sync_lag_seconds": seconds_between(r["last_recorded_at"], r["last_sealed_at"]),
        "credential": credential,
        "open_flags": r["open_flags"],
        "devices": {"bound": r["devices"], "last_seen": r["device_last_seen"]},
    }


def _cursor(request: web.Request, name: str) -> str | None:
    text = request.query.get(name, "")
    if text == "":
        return None
    if not OUTLET_ID.fullmatch(text):
        raise Invalid("bad_parameter", f"`{name}` is an outlet id")
    return text


@page("outlets.html")
async def outlets_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    return await svc.call(outlets_data, svc.store, viewer, search=text_param(request, "q"),
                          flagged=request.query.get("flagged") in ("1", "true", "on"),
                          after=_cursor(request, "after"), before=_cursor(request, "before"), now=svc.now())
