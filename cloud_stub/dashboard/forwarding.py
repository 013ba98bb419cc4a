"""The DGI forwarding queue (docs/dgi-forwarding.md) as operators watch it: waiting, failing
(the outlet backing off after refusals of service), quarantined (the DGI refused the invoice).
Actions: retry now, release from quarantine."""
from __future__ import annotations

from datetime import datetime

from aiohttp import web

from .. import forwarding
from ..errors import Invalid
from ..logs import event
from .access import Viewer
from .auth import action, require_operator
from .render import outlet_in_scope, page, service


def _state(status: dict) -> str:
    if status["counts"].get("quarantined"):
        return "quarantined"
    if status["failures"]:
        return "failing"
    return "pending" if status["waiting"] else "idle"


def overview_data(store, viewer: Viewer) -> dict:
    scope = None if viewer.operator else viewer.merchant_nif
    with store.read() as tx:
        rows = tx.dgi_problem_queues(scope, 500)
        totals = tx.dgi_queue_by_state() if viewer.operator else None
    return {"totals": {r["state"]: {"n": r["n"], "oldest": r["oldest"]} for r in totals} if totals is not None else None,
            "queues": [{"outlet_id": r["outlet_id"], "failures": r["failures"], "last_error": r["last_error"],
                        "not_before": r["not_before"], "quarantined": r["quarantined"], "next_seq": r["next_seq"]}
                       for r in rows]}


@page("dgi_overview.html")
async def overview_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    return await svc.call(overview_data, svc.store, viewer)


def queue_data(store, viewer: Viewer, outlet_id: str) -> dict:
    with store.read() as tx:
        outlet_in_scope(tx.outlet(outlet_id), viewer, outlet_id)
    status = forwarding.outlet_status(store, outlet_id, 200)
    status["state"] = _state(status)
    return status


@page("dgi.html")
async def queue_page(request: web.Request, viewer: Viewer) -> dict:
    svc = service(request)
    return await svc.call(queue_data, svc.store, viewer, request.match_info["outlet_id"])


def retry_now(store, viewer: Viewer, outlet_id: str, now: datetime) -> bool:
    with store.write() as tx:
        outlet_in_scope(tx.outlet(outlet_id), viewer, outlet_id)
        require_operator(viewer)
        tx.dgi_lock_queue(outlet_id)  # not while the outlet's forwarder records an answer
        return tx.dgi_retry_now(outlet_id, forwarding.ts(now))


def release(store, viewer: Viewer, outlet_id: str, seq: int | None, now: datetime) -> list[int]:
    with store.read() as tx:
        outlet_in_scope(tx.outlet(outlet_id), viewer, outlet_id)
    require_operator(viewer)
    return forwarding.release(store, outlet_id, seq, "operator (dashboard)", now)


@action
async def retry_action(request: web.Request, viewer: Viewer, form: dict) -> str:
    svc = service(request)
    outlet_id = request.match_info["outlet_id"]
    waited = await svc.call(retry_now, svc.store, viewer, outlet_id, svc.now())
    event("dgi.retry_now", outlet_id=outlet_id, actor="operator (dashboard)", was_waiting=waited)
    return f"/dashboard/outlets/{outlet_id}/dgi?done={'retry' if waited else 'not-waiting'}"


@action
async def release_action(request: web.Request, viewer: Viewer, form: dict) -> str:
    svc = service(request)
    outlet_id = request.match_info["outlet_id"]
    text = str(form.get("seq", "")).strip()
    if text and not (text.isascii() and text.isdigit() and 1 <= int(text) <= 2**62):
        raise Invalid("bad_parameter", "`seq` is a ledger entry's number")
    released = await svc.call(release, svc.store, viewer, outlet_id, int(text) if text else None, svc.now())
    event("dgi.released", outlet_id=outlet_id, seqs=released, actor="operator (dashboard)")
    return f"/dashboard/outlets/{outlet_id}/dgi?done=released-{len(released)}"
