"""The e-MCF simulator's HTTP service (aiohttp): `/api/...` as the DGI serves it, `/_sim/...` to drive it.

Beyond the public API (see docs/dgi-forwarding.md, "What the simulator adds"): the pending
list's entries carry `rn`, and `GET /api/invoice/{uid}` tells a request's status (and its
elements once confirmed). A real DGI may offer neither; the forwarder only relies on `uid` it
stored before confirming and on `rn` in the pending list, and stays idempotent without more.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from .faults import Switchboard
from .rules import Refusal, number, validate
from .store import Store
from .tokens import TokenError, verify

KINSHASA = timezone(timedelta(hours=1))  # the DGI's clock: Kinshasa time, no daylight saving


@dataclass
class Limits:
    max_pending: int = 10  # unconfirmed requests per point of sale
    pending_ttl: float = 120.0  # seconds before an unconfirmed request expires
    rate: float = 0.0  # requests per second per point of sale (0: no limit)
    latency_ms: int = 0  # added to every answer: a DGI across the Internet


STORE = web.AppKey("store", Store)
FAULTS = web.AppKey("faults", Switchboard)
LIMITS = web.AppKey("limits", Limits)
WINDOWS = web.AppKey("windows", dict)
# point of sale -> (monotonic time its Retry-After ends, monotonic time that 429 was answered,
# calls arriving just after it still taken for calls already in flight)
IN_FLIGHT_EXCUSED = 1
IN_FLIGHT_WINDOW = 0.25  # seconds after the 429 within which such a call may arrive
RETRY_UNTIL = web.AppKey("retry_until", dict)
COUNTS = web.AppKey("counts", dict)  # since start (not persisted): 429s, ignored Retry-After, limits hit
# Tokens whose signature was checked already (token -> its point of sale): a point of sale
# sends the same token at every call, and decoding and checking it each time cost more than the
# call's own work. The expiry is still checked at every call.
TOKENS = web.AppKey("tokens", dict)
POS = web.RequestKey("pos", object)
NIF_OF_DGI = "DGI"


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    """A JSON answer encoded by orjson (aiohttp's json_response runs json.dumps: several times the CPU)."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def error(code: str, desc: str, status: int = 400, headers: dict | None = None) -> web.Response:
    return _json({"errorCode": code, "errorDesc": desc}, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Close the connection without an answer: the client sees it reset."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


@web.middleware
async def faults_and_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    if request.path.startswith("/_sim/"):
        return await handler(request)
    faults, limits = request.app[FAULTS], request.app[LIMITS]
    arrived = time.monotonic()
    down, slow = faults.request_seen()
    delay = (limits.latency_ms + slow) / 1000
    if delay:
        await asyncio.sleep(delay)
    if down == "drop":
        return _drop(request)
    if down == "503":
        return web.Response(status=503, text="Service Unavailable")
    if faults.take("error_5xx"):
        return web.Response(status=500, text="Internal Server Error")
    header = request.headers.get("Authorization", "").strip()
    token = header[7:].strip() if header[:7].lower() == "bearer " else header  # raw token accepted too
    if not token:
        return error("TOKEN_MISSING", "send Authorization: Bearer <token>", 401)
    if faults.take("expired_token"):
        return error("TOKEN_EXPIRED", "the token has expired: ask the DGI for a new one", 401)
    tokens = request.app[TOKENS]
    pos = tokens.get(token)
    if pos is None or pos.expires <= time.time():  # the expiry is checked at every call
        try:
            pos = verify(request.app[STORE].secret, token)
        except TokenError as exc:
            return error(exc.code, exc.desc, 401)
        if len(tokens) >= 10_000:
            tokens.clear()
        tokens[token] = pos
    key, counts, until = (pos.nif, pos.isf), request.app[COUNTS], request.app[RETRY_UNTIL]
    ends, answered, excused = until.get(key, (0.0, 0.0, 0))
    if time.monotonic() < ends:
        if arrived < answered or (excused > 0 and arrived - answered < IN_FLIGHT_WINDOW):
            # Already on its way when the 429 was answered (the cloud's forwarder keeps up to two
            # calls of a point of sale in flight): refused too, but it could not have waited.
            # Besides those seen arriving before the answer, one call per 429 arriving just
            # after it is taken for such a call (a busy loop may start its handler late); any
            # further one is counted.
            if arrived >= answered:
                until[key] = (ends, answered, excused - 1)
            counts["answered_429"] = counts.get("answered_429", 0) + 1
            return error("RATE_LIMIT", "you were asked to wait (Retry-After)", 429,
                         {"Retry-After": str(max(1, round(ends - time.monotonic())))})
        # Asked to wait and did not: what the tests check the forwarder never does.
        counts["retry_after_ignored"] = counts.get("retry_after_ignored", 0) + 1
        return _slow_down(request, key, "you were asked to wait (Retry-After)")
    if faults.take("r429"):
        return _slow_down(request, key, "too many requests")
    if limits.rate > 0 and not _within_rate(request.app[WINDOWS], key, limits.rate):
        return _slow_down(request, key, "too many requests for this point of sale")
    request[POS] = pos
    request.app[STORE].expire(time.time())
    try:
        return await handler(request)
    except Refusal as exc:
        return error(exc.code, exc.desc, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error("HTTP_ERROR", exc.reason, exc.status)


def _slow_down(request: web.Request, key: tuple[str, str], desc: str) -> web.Response:
    seconds = request.app[FAULTS].levels["retry_after"]
    now = time.monotonic()
    request.app[RETRY_UNTIL][key] = (now + seconds, now, IN_FLIGHT_EXCUSED)
    counts = request.app[COUNTS]
    counts["answered_429"] = counts.get("answered_429", 0) + 1
    return error("RATE_LIMIT", desc, 429, {"Retry-After": str(seconds)})


def _within_rate(windows: dict, key: tuple[str, str], rate: float) -> bool:
    """A one-second sliding window of request times per point of sale."""
    now = time.monotonic()
    window = windows.setdefault(key, deque())
    while window and window[0] <= now - 1.0:
        window.popleft()
    if len(window) >= max(1, int(rate)):
        return False
    window.append(now)
    return True


def _now() -> datetime:
    return datetime.now(KINSHASA).replace(microsecond=0)


_stamps: list[Any] = [None, ("", "")]  # the last second confirm stamped, and its two texts


def _confirm_stamps() -> tuple[str, str]:
    """The confirm's dateTime and the QR code's stamp, formatted once per second (not per confirm)."""
    moment = _now()
    if moment != _stamps[0]:
        _stamps[:] = [moment, (moment.strftime("%Y-%m-%d %H:%M:%S"), moment.strftime("%Y%m%d%H%M%S"))]
    return _stamps[1]


def _pos(request: web.Request):
    return request[POS]


async def info_status(request: web.Request) -> web.Response:
    pos = _pos(request)
    nim = request.app[STORE].nim(pos.nif, pos.isf)
    return _json({
        "status": "OK", "nif": pos.nif, "nim": nim, "tokenValid": True,
        "serverDateTime": _now().isoformat(),
        "emcfList": [{"nim": nim, "status": "Actif", "shopName": pos.isf, "address1": "", "address2": "",
                      "address3": "", "contact1": "", "contact2": "", "contact3": ""}],
    })


async def info_tax_groups(request: web.Request) -> web.Response:
    from .rules import RATES
    return _json({g.lower(): float(r) for g, r in RATES.items()})


async def pending_list(request: web.Request) -> web.Response:
    pos = _pos(request)
    store = request.app[STORE]
    rows = store.pending(pos.nif, pos.isf)
    return _json({
        "nif": pos.nif, "nim": store.nim(pos.nif, pos.isf), "pendingRequestsCount": len(rows),
        "pendingRequestsList": [{"uid": r["uid"], "rn": r["rn"],
                                 "date": datetime.fromtimestamp(r["created_at"], KINSHASA).isoformat(timespec="seconds")}
                                for r in rows],
    })


async def _json_body(request: web.Request) -> Any:
    return _parse(await request.read())


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError, also for bytes that are not UTF-8
        raise Refusal("INVALID_BODY", "the body is not JSON") from None


async def submit(request: web.Request) -> web.Response:
    pos = _pos(request)
    store, limits = request.app[STORE], request.app[LIMITS]
    raw = await request.read()
    body = _parse(raw)
    checked = validate(body, pos.nif, pos.isf)
    if request.app[FAULTS].take("refuse"):
        raise Refusal("INVOICE_REFUSED", "the DGI refuses this invoice (simulated refusal)")
    if store.pending_count(pos.nif, pos.isf) >= limits.max_pending:
        counts = request.app[COUNTS]
        counts["pending_limit"] = counts.get("pending_limit", 0) + 1
        raise Refusal("PENDING_LIMIT", f"{limits.max_pending} requests are pending confirmation for this "
                      "point of sale: confirm or cancel them first", 429)
    uid = str(uuid.uuid4())
    store.create(uid=uid, nif=pos.nif, isf=pos.isf, rn=checked["rn"], type_=checked["type"],
                 body=raw.decode("utf-8"),
                 total=str(checked["total"]), vtotal=str(checked["vtotal"]), now=time.time(),
                 ttl=limits.pending_ttl)
    if request.app[FAULTS].take("lost_submit"):
        return _drop(request)  # pending at the DGI: only the answer is lost
    return _json({"uid": uid, "total": float(checked["total"]), "vtotal": float(checked["vtotal"]),
                              **checked["figures"]})


def _request_of(request: web.Request):
    pos = _pos(request)
    row = request.app[STORE].get(request.match_info["uid"], pos.nif, pos.isf)
    if row is None:
        raise Refusal("NOT_FOUND", "no such request for this point of sale", 404)
    return row


def _elements(row) -> dict[str, Any]:
    return {"dateTime": row["date_time"], "qrCode": row["qr_code"], "codeDEFDGI": row["code"],
            "counters": row["counters"], "nim": row["nim"]}


async def lookup(request: web.Request) -> web.Response:
    """Simulator extension: a request's status, and its elements once confirmed."""
    row = _request_of(request)
    out = {"uid": row["uid"], "rn": row["rn"], "status": row["status"],
           "total": float(Decimal(row["total"])), "vtotal": float(Decimal(row["vtotal"]))}
    if row["status"] == "confirmed":
        out.update(_elements(row))
    return _json(out)


def _not_pending(row) -> Refusal:
    return Refusal("NOT_PENDING", f"the request is {row['status']}, not pending", 409)


async def confirm(request: web.Request) -> web.Response:
    row = _request_of(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise Refusal("INVALID_BODY", "the body must be {total, vtotal}")
    total, vtotal = number(body.get("total"), "total"), number(body.get("vtotal"), "vtotal")
    if row["status"] != "pending":
        raise _not_pending(row)
    if total != Decimal(row["total"]) or vtotal != Decimal(row["vtotal"]):
        raise Refusal("TOTALS_MISMATCH", f"the totals differ from phase 1's ({row['total']}, {row['vtotal']})")
    elements = request.app[STORE].confirm(row, *_confirm_stamps())
    held = request.app[FAULTS].levels["confirm_delay_ms"]
    if held:
        await asyncio.sleep(held / 1000)  # normalized already: only the answer is late
    if request.app[FAULTS].take("lost_confirm"):
        return _drop(request)  # normalized: only the answer is lost
    return _json(elements)


async def cancel(request: web.Request) -> web.Response:
    row = _request_of(request)
    if row["status"] != "pending":
        raise _not_pending(row)
    request.app[STORE].set_status(row["uid"], "cancelled")
    return _json({"uid": row["uid"], "status": "cancelled"})


# -- control ------------------------------------------------------------------------------


async def sim_faults_get(request: web.Request) -> web.Response:
    return _json(request.app[FAULTS].snapshot())


async def sim_faults_set(request: web.Request) -> web.Response:
    text = (await request.read()).decode("utf-8", "replace")
    faults = request.app[FAULTS]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        from .faults import parse_assignment
        for line in lines:
            if line != "clear":
                parse_assignment(line)  # all or nothing: refuse a bad line before applying any
    except ValueError as exc:
        return error("BAD_FAULT", str(exc), 400)
    for line in lines:
        faults.apply(line)
    return _json(faults.snapshot())


async def sim_stats(request: web.Request) -> web.Response:
    return _json({**request.app[STORE].stats(), "since_start": dict(request.app[COUNTS])})


async def sim_progress(request: web.Request) -> web.Response:
    """How many requests were normalized, without reading the table (what a benchmark polls)."""
    return _json({"normalized": request.app[STORE].normalized})


async def _not_found(request: web.Request) -> web.Response:
    return error("NOT_FOUND", "no such endpoint", 404)


def make_app(store: Store, faults: Switchboard | None = None, limits: Limits | None = None) -> web.Application:
    app = web.Application(middlewares=[faults_and_auth], client_max_size=4 * 1024 * 1024)
    app[STORE] = store
    app[FAULTS] = faults or Switchboard()
    app[LIMITS] = limits or Limits()
    app[WINDOWS] = {}
    app[RETRY_UNTIL] = {}
    app[COUNTS] = {}
    app[TOKENS] = {}
    r = app.router
    r.add_get("/api/info/status", info_status)
    r.add_get("/api/info/taxGroups", info_tax_groups)
    r.add_get("/api/invoice", pending_list)
    r.add_post("/api/invoice", submit)
    r.add_get("/api/invoice/{uid}", lookup)
    r.add_put("/api/invoice/{uid}/confirm", confirm)
    r.add_put("/api/invoice/{uid}/cancel", cancel)
    r.add_get("/_sim/faults", sim_faults_get)
    r.add_post("/_sim/faults", sim_faults_set)
    r.add_get("/_sim/stats", sim_stats)
    r.add_get("/_sim/progress", sim_progress)
    r.add_route("*", "/{tail:.*}", _not_found)
    return app
