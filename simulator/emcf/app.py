"""The e-MCF simulator's HTTP service (aiohttp): `/api/...` as the DGI serves it, `/_sim/...` to drive it.

Beyond the public API (see docs/dgi-forwarding.md, "What the simulator adds"): the pending
list's entries carry `rn`, and `GET /api/invoice/{uid}` tells a request's status (and its
elements once confirmed). A real DGI may offer neither; the forwarder only relies on `uid` it
stored before confirming and on `rn` in the pending list, and stays idempotent without more.

Served by aiohttp's low-level server (`web.Server`) with one handler, `EmcfApi`, that finds the
route itself from the method and the path: a dozen fixed routes do not need an Application's
router, match-info objects and middleware chain, which cost the simulator ≈ 5 % of its CPU per
call in a forwarding run. What they did is kept: the routes of `add_get` answer HEAD too, a path
or method without a route is a JSON 404 (after the faults and the token check under `/api/`),
the `{uid}` segment is what aiohttp's `{uid}` matched, `Expect: 100-continue` is answered, and
bodies up to 4 MiB are read.
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
from aiohttp.http import HttpVersion11

from .faults import Switchboard
from .rules import Refusal, number, validate
from .store import Store
from .tokens import TokenError, verify

KINSHASA = timezone(timedelta(hours=1))  # the DGI's clock: Kinshasa time, no daylight saving
MAX_BODY = 4 * 1024 * 1024


@dataclass
class Limits:
    max_pending: int = 10  # unconfirmed requests per point of sale
    pending_ttl: float = 120.0  # seconds before an unconfirmed request expires
    rate: float = 0.0  # requests per second per point of sale (0: no limit)
    latency_ms: int = 0  # added to every answer: a DGI across the Internet


# After a 429, calls of that point of sale arriving just after it are still taken for calls
# already in flight (see EmcfApi.retry_until).
IN_FLIGHT_EXCUSED = 1
IN_FLIGHT_WINDOW = 0.25  # seconds after the 429 within which such a call may arrive
NIF_OF_DGI = "DGI"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    """A JSON answer encoded by orjson (aiohttp's json_response runs json.dumps: several times the CPU)."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def error(code: str, desc: str, status: int = 400, headers: dict | None = None) -> web.Response:
    return _json({"errorCode": code, "errorDesc": desc}, status=status, headers=headers)


def _drop(request: web.BaseRequest) -> web.Response:
    """Close the connection without an answer: the client sees it reset."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def _request_factory(message, payload, protocol, writer, task) -> web.BaseRequest:
    return web.BaseRequest(message, payload, protocol, writer, task, task.get_loop(), client_max_size=MAX_BODY)


def make_server(store: Store, faults: Switchboard | None = None, limits: Limits | None = None,
                **kwargs: Any) -> web.Server:
    """The simulator as an aiohttp low-level server (inside a running loop); `kwargs` go to
    `web.Server` (e.g. `access_log=None`)."""
    return web.Server(EmcfApi(store, faults, limits), request_factory=_request_factory, **kwargs)


async def _expect(request: web.BaseRequest) -> None:
    """What aiohttp's routes do with `Expect` (their default expect handler)."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        else:
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    await request.writer.drain()


def _segment(value: str) -> str | None:
    """A `{name}` route segment as aiohttp matches and decodes it (None: no match)."""
    if not value or "/" in value or "{" in value or "}" in value:
        return None
    if "%" not in value:
        return value
    return value.replace("%2F", "/").replace("%25", "%")


class EmcfApi:
    """The whole service: one handler for aiohttp's low-level server, and the simulator's state."""

    def __init__(self, store: Store, faults: Switchboard | None = None, limits: Limits | None = None):
        self.store = store
        store.group_commits()
        self.faults = faults or Switchboard()
        self.limits = limits or Limits()
        self.windows: dict = {}
        # point of sale -> (monotonic time its Retry-After ends, monotonic time that 429 was
        # answered, calls arriving just after it still taken for calls already in flight)
        self.retry_until: dict = {}
        self.counts: dict = {}  # since start (not persisted): 429s, ignored Retry-After, limits hit
        # Tokens whose signature was checked already (token -> its point of sale): a point of sale
        # sends the same token at every call, and decoding and checking it each time cost more than
        # the call's own work. The expiry is still checked at every call.
        self.tokens: dict = {}
        get = ("GET", "HEAD")  # aiohttp's add_get answers HEAD too
        self._api: dict[tuple[str, str], Callable[..., Awaitable[web.StreamResponse]]] = {
            **{(m, "/api/info/status"): self.info_status for m in get},
            **{(m, "/api/info/taxGroups"): self.info_tax_groups for m in get},
            **{(m, "/api/invoice"): self.pending_list for m in get},
            ("POST", "/api/invoice"): self.submit,
        }
        # /api/invoice/{uid}[/action]
        self._by_uid: dict[tuple[str, str], Callable[..., Awaitable[web.StreamResponse]]] = {
            **{(m, ""): self.lookup for m in get}, ("PUT", "confirm"): self.confirm, ("PUT", "cancel"): self.cancel,
        }
        self._sim: dict[tuple[str, str], Handler] = {
            **{(m, "/_sim/faults"): self.sim_faults_get for m in get},
            ("POST", "/_sim/faults"): self.sim_faults_set,
            **{(m, "/_sim/stats"): self.sim_stats for m in get},
            **{(m, "/_sim/progress"): self.sim_progress for m in get},
        }

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Expect"):
            await _expect(request)
        if request.path.startswith("/_sim/"):
            handler = self._sim.get((request.method, request.rel_url.path_safe), _not_found)
            return await handler(request)
        return await self._faults_and_auth(request)

    def _route(self, method: str, path: str) -> tuple[Callable[..., Awaitable[web.StreamResponse]] | None, str]:
        """The /api handler of a call, and the uid its path names ("" if none)."""
        handler = self._api.get((method, path))
        if handler is not None:
            return handler, ""
        if path.startswith("/api/invoice/"):
            uid, slash, action = path[13:].partition("/")
            uid = _segment(uid)
            if uid is not None and bool(slash) == bool(action):  # `/api/invoice/{uid}/` has no route
                handler = self._by_uid.get((method, action))
                if handler is not None:
                    return handler, uid
        return None, ""

    async def _faults_and_auth(self, request: web.BaseRequest) -> web.StreamResponse:
        faults, limits = self.faults, self.limits
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
        tokens = self.tokens
        pos = tokens.get(token)
        if pos is None or pos.expires <= time.time():  # the expiry is checked at every call
            try:
                pos = verify(self.store.secret, token)
            except TokenError as exc:
                return error(exc.code, exc.desc, 401)
            if len(tokens) >= 10_000:
                tokens.clear()
            tokens[token] = pos
        key, counts, until = (pos.nif, pos.isf), self.counts, self.retry_until
        ends, answered, excused = until.get(key, (0.0, 0.0, 0))
        if time.monotonic() < ends:
            if arrived < answered or (excused > 0 and arrived - answered < IN_FLIGHT_WINDOW):
                # Already on its way when the 429 was answered (the cloud's forwarder keeps up to
                # two calls of a point of sale in flight): refused too, but it could not have
                # waited. Besides those seen arriving before the answer, one call per 429 arriving
                # just after it is taken for such a call (a busy loop may start its handler late);
                # any further one is counted.
                if arrived >= answered:
                    until[key] = (ends, answered, excused - 1)
                counts["answered_429"] = counts.get("answered_429", 0) + 1
                return error("RATE_LIMIT", "you were asked to wait (Retry-After)", 429,
                             {"Retry-After": str(max(1, round(ends - time.monotonic())))})
            # Asked to wait and did not: what the tests check the forwarder never does.
            counts["retry_after_ignored"] = counts.get("retry_after_ignored", 0) + 1
            return self._slow_down(key, "you were asked to wait (Retry-After)")
        if faults.take("r429"):
            return self._slow_down(key, "too many requests")
        if limits.rate > 0 and not _within_rate(self.windows, key, limits.rate):
            return self._slow_down(key, "too many requests for this point of sale")
        self.store.expire(time.time())
        handler, uid = self._route(request.method, request.rel_url.path_safe)
        try:
            if handler is None:
                response = await _not_found(request)
            elif uid:
                response = await handler(request, pos, uid)
            else:
                response = await handler(request, pos)
        except Refusal as exc:
            response = error(exc.code, exc.desc, exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error("HTTP_ERROR", exc.reason, exc.status)
        await self.store.durable()  # answered once what the call wrote is committed
        return response

    def _slow_down(self, key: tuple[str, str], desc: str) -> web.Response:
        seconds = self.faults.levels["retry_after"]
        now = time.monotonic()
        self.retry_until[key] = (now + seconds, now, IN_FLIGHT_EXCUSED)
        counts = self.counts
        counts["answered_429"] = counts.get("answered_429", 0) + 1
        return error("RATE_LIMIT", desc, 429, {"Retry-After": str(seconds)})

    # -- the API ----------------------------------------------------------------------------

    async def info_status(self, request: web.BaseRequest, pos) -> web.Response:
        nim = self.store.nim(pos.nif, pos.isf)
        return _json({
            "status": "OK", "nif": pos.nif, "nim": nim, "tokenValid": True,
            "serverDateTime": _now().isoformat(),
            "emcfList": [{"nim": nim, "status": "Actif", "shopName": pos.isf, "address1": "", "address2": "",
                          "address3": "", "contact1": "", "contact2": "", "contact3": ""}],
        })

    async def info_tax_groups(self, request: web.BaseRequest, pos) -> web.Response:
        from .rules import RATES
        return _json({g.lower(): float(r) for g, r in RATES.items()})

    async def pending_list(self, request: web.BaseRequest, pos) -> web.Response:
        store = self.store
        rows = store.pending(pos.nif, pos.isf)
        return _json({
            "nif": pos.nif, "nim": store.nim(pos.nif, pos.isf), "pendingRequestsCount": len(rows),
            "pendingRequestsList": [{"uid": r["uid"], "rn": r["rn"],
                                     "date": datetime.fromtimestamp(r["created_at"], KINSHASA).isoformat(
                                         timespec="seconds")}
                                    for r in rows],
        })

    async def submit(self, request: web.BaseRequest, pos) -> web.Response:
        store, limits = self.store, self.limits
        raw = await request.read()
        body = _parse(raw)
        checked = validate(body, pos.nif, pos.isf)
        if self.faults.take("refuse"):
            raise Refusal("INVOICE_REFUSED", "the DGI refuses this invoice (simulated refusal)")
        if store.pending_count(pos.nif, pos.isf) >= limits.max_pending:
            counts = self.counts
            counts["pending_limit"] = counts.get("pending_limit", 0) + 1
            raise Refusal("PENDING_LIMIT", f"{limits.max_pending} requests are pending confirmation for this "
                          "point of sale: confirm or cancel them first", 429)
        uid = str(uuid.uuid4())
        store.create(uid=uid, nif=pos.nif, isf=pos.isf, rn=checked["rn"], type_=checked["type"],
                     body=raw.decode("utf-8"),
                     total=str(checked["total"]), vtotal=str(checked["vtotal"]), now=time.time(),
                     ttl=limits.pending_ttl)
        if self.faults.take("lost_submit"):
            await store.durable()
            return _drop(request)  # pending at the DGI: only the answer is lost
        return _json({"uid": uid, "total": float(checked["total"]), "vtotal": float(checked["vtotal"]),
                      **checked["figures"]})

    def _request_of(self, pos, uid: str):
        row = self.store.get(uid, pos.nif, pos.isf)
        if row is None:
            raise Refusal("NOT_FOUND", "no such request for this point of sale", 404)
        return row

    async def lookup(self, request: web.BaseRequest, pos, uid: str) -> web.Response:
        """Simulator extension: a request's status, and its elements once confirmed."""
        row = self._request_of(pos, uid)
        out = {"uid": row["uid"], "rn": row["rn"], "status": row["status"],
               "total": float(Decimal(row["total"])), "vtotal": float(Decimal(row["vtotal"]))}
        if row["status"] == "confirmed":
            out.update(_elements(row))
        return _json(out)

    async def confirm(self, request: web.BaseRequest, pos, uid: str) -> web.Response:
        row = self._request_of(pos, uid)
        body = _parse(await request.read())
        if not isinstance(body, dict):
            raise Refusal("INVALID_BODY", "the body must be {total, vtotal}")
        total, vtotal = number(body.get("total"), "total"), number(body.get("vtotal"), "vtotal")
        if row["status"] != "pending":
            raise _not_pending(row)
        if total != Decimal(row["total"]) or vtotal != Decimal(row["vtotal"]):
            raise Refusal("TOTALS_MISMATCH", f"the totals differ from phase 1's ({row['total']}, {row['vtotal']})")
        elements = self.store.confirm(row, *_confirm_stamps())
        held = self.faults.levels["confirm_delay_ms"]
        if held:
            await asyncio.sleep(held / 1000)  # normalized already: only the answer is late
        if self.faults.take("lost_confirm"):
            await self.store.durable()
            return _drop(request)  # normalized: only the answer is lost
        return _json(elements)

    async def cancel(self, request: web.BaseRequest, pos, uid: str) -> web.Response:
        row = self._request_of(pos, uid)
        if row["status"] != "pending":
            raise _not_pending(row)
        self.store.set_status(row["uid"], "cancelled")
        return _json({"uid": row["uid"], "status": "cancelled"})

    # -- control ----------------------------------------------------------------------------

    async def sim_faults_get(self, request: web.BaseRequest) -> web.Response:
        return _json(self.faults.snapshot())

    async def sim_faults_set(self, request: web.BaseRequest) -> web.Response:
        text = (await request.read()).decode("utf-8", "replace")
        faults = self.faults
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

    async def sim_stats(self, request: web.BaseRequest) -> web.Response:
        return _json({**self.store.stats(), "since_start": dict(self.counts)})

    async def sim_progress(self, request: web.BaseRequest) -> web.Response:
        """How many requests were normalized, without reading the table (what a benchmark polls)."""
        return _json({"normalized": self.store.normalized})


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


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError, also for bytes that are not UTF-8
        raise Refusal("INVALID_BODY", "the body is not JSON") from None


def _elements(row) -> dict[str, Any]:
    return {"dateTime": row["date_time"], "qrCode": row["qr_code"], "codeDEFDGI": row["code"],
            "counters": row["counters"], "nim": row["nim"]}


def _not_pending(row) -> Refusal:
    return Refusal("NOT_PENDING", f"the request is {row['status']}, not pending", 409)


async def _not_found(request: web.BaseRequest) -> web.Response:
    return error("NOT_FOUND", "no such endpoint", 404)
