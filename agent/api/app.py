"""The POS-facing HTTP API (contract v1, see docs/api.md)."""
from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import time
from datetime import datetime
from typing import Any

import qrcode
import qrcode.image.pure
import qrcode.image.svg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import AgentError, InvalidInvoice, SealingBlocked
from fiscal.models import MAX_ITEMS
from ..config import AgentConfig
from ..dgi import DGI, answers_ctx
from ..service import AgentService
from . import keys, status
from .openapi import openapi_document
from fiscal.runtime.problems import problem

log = logging.getLogger("stalela.api")

SERVICE = web.AppKey("service", AgentService)
METRICS = web.AppKey("metrics", dict)
KEYS = web.AppKey("keys", keys.KeyRing)
API_KEY_NAME = web.RequestKey("api_key_name", str)  # the name of the key the request came with

# "/" is the outlet's status page: no key, but loopback callers only (agent/api/status.py).
PUBLIC_PATHS = {"/", "/v1/health", "/v1/openapi.json", "/metrics"}

# The health colours, in the order of the stalela_health_state gauge's documentation (docs/api.md).
HEALTH_STATES = ("green", "blue", "amber", "red")


def _metrics() -> dict[str, Any]:
    reg = CollectorRegistry()
    m = {
        "registry": reg,
        "sealed": Counter("stalela_invoices_sealed_total", "Invoices sealed", ["mode"], registry=reg),
        "refused": Counter("stalela_invoices_refused_total", "Invoices refused", ["status"], registry=reg),
        "latency": Histogram("stalela_seal_seconds", "Time to seal, request to durable answer",
                             buckets=(.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=reg),
        "remaining": Gauge("stalela_credential_numbers_remaining", "Fiscal numbers left", registry=reg),
        "pending": Gauge("stalela_sync_pending", "Sealed invoices not yet acknowledged by the cloud", registry=reg),
        "state": Gauge("stalela_health_state", "1 for the agent's current health colour (green, blue, amber, red), "
                       "0 for the others", ["state"], registry=reg),
        "seconds_left": Gauge("stalela_credential_seconds_left",
                              "Seconds until the active credential expires (0 when none is active)", registry=reg),
        "ready": Gauge("stalela_credential_ready", "Next credentials fetched and ready (successors)", registry=reg),
        "device_configured": Gauge("stalela_device_configured", "1 when a fiscal device is in the signer policy",
                                   registry=reg),
        "device_up": Gauge("stalela_device_up", "1 when the fiscal device answers and can seal", registry=reg),
        "last_sync": Gauge("stalela_sync_last_success_timestamp_seconds",
                           "Unix time of the last successful upload to the cloud (0: none since the agent started)",
                           registry=reg),
        "quarantined": Gauge("stalela_sync_quarantined", "Invoices the cloud rejected, kept for review", registry=reg),
        "build": Info("stalela_build", "The agent's version", registry=reg),
    }
    m["build"].info({"version": _version()})
    return m


def _version() -> str:
    try:
        return importlib.metadata.version("stalela-edge")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _refresh_gauges(m: dict[str, Any], h: dict[str, Any]) -> None:
    """Set the gauges from one AgentService.health() answer (scrapes and health calls)."""
    cred, sync, device = h["credential"], h["sync"], h.get("device")
    m["remaining"].set(cred["remaining_numbers"])
    m["pending"].set(sync["pending"])
    for state in HEALTH_STATES:
        m["state"].labels(state).set(1 if h["state"] == state else 0)
    m["seconds_left"].set((cred.get("active") or {}).get("seconds_left") or 0)
    m["ready"].set(len(cred.get("ready") or []))
    m["device_configured"].set(0 if device is None else 1)
    m["device_up"].set(1 if device is not None and device.get("available") else 0)
    m["last_sync"].set(_unix(sync.get("last_success")))
    m["quarantined"].set(sync.get("quarantined") or 0)


def _unix(iso: str | None) -> float:
    if not iso:
        return 0
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0


@web.middleware
async def problems_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except AgentError as exc:
        return problem(exc.status, exc.title, exc.detail, exc.type, **exc.extra)
    except web.HTTPRequestEntityTooLarge as exc:
        return problem(413, "Request body too large", exc.text or "the body exceeds the limit",
                       "/problems/body-too-large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:  # the router's answer to an unknown path
            return problem(404, "Not found", f"no route {request.method} {request.path}", "/problems/not-found")
        return problem(exc.status, exc.reason, exc.text or exc.reason)
    except Exception:  # never a stack trace to the POS
        log.exception("unhandled error", extra={"event": "api.error", "path": request.path})
        return problem(500, "Internal error", "the agent hit an unexpected error; it was logged")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return problem(401, "Unauthorized", "send Authorization: Bearer <api key>", "/problems/unauthorized")
    token = token.strip()
    # Keys are printable ASCII ("stk_" + base64url). aiohttp hands header bytes that are not
    # UTF-8 over as surrogate escapes, which no hash can encode: such a header is just a wrong key.
    name = request.app[KEYS].lookup(token) if token.isascii() and token.isprintable() else None
    if name is None:
        return problem(401, "Unauthorized", "the API key is not valid for this agent", "/problems/unauthorized")
    request[API_KEY_NAME] = name
    return await handler(request)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInvoice("the body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_float=_reject_number, parse_constant=_reject_number)
    except _FloatRejected as exc:
        raise InvalidInvoice(f"amounts and quantities are decimal strings, not JSON numbers ({exc})",
                             errors=[{"field": "body", "message": "floats are not allowed; send \"930.00\""}]) from None
    except json.JSONDecodeError as exc:
        raise InvalidInvoice(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidInvoice("the body is not valid JSON: it holds a number too long to read") from None
    except RecursionError:  # e.g. 100,000 `[`: the parser's recursion limit, not a crash
        raise InvalidInvoice("the body is not valid JSON: it is nested too deeply") from None


class _FloatRejected(ValueError):
    pass


def _reject_number(text: str):
    """parse_float and parse_constant: a JSON float, NaN or Infinity is never an amount."""
    raise _FloatRejected(text)


async def post_invoice(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    m = request.app[METRICS]
    started = time.perf_counter()
    payload = await _json_body(request)
    if isinstance(payload, dict) and isinstance(payload.get("items"), list) and len(payload["items"]) > MAX_ITEMS:
        raise InvalidInvoice(f"at most {MAX_ITEMS} items per invoice",
                             errors=[{"field": "items", "message": f"{len(payload['items'])} items; at most {MAX_ITEMS}"}])
    try:
        job = service.prepare(payload)
        if not service.writer_answers_retries():
            # Answer a retry from the journal before a device or the cloud is asked anything.
            answered = _stored_answer(service, job)
            if answered is not None:
                return answered
        try:
            outcome = await service.seal(job)
        except SealingBlocked:
            # Sealing is refused now, but a retry of a request sealed earlier still gets its answer.
            answered = _stored_answer(service, job)
            if answered is not None:
                return answered
            raise
    except AgentError as exc:
        m["refused"].labels(str(exc.status)).inc()
        raise
    if not outcome.created and outcome.status != "queued":
        # A retry answered by the signer: the stored answer, with its current sync state.
        answered = _stored_answer(service, job)
        if answered is not None:
            return answered
    m["latency"].observe(time.perf_counter() - started)
    if outcome.created and outcome.status == "sealed":
        m["sealed"].labels(outcome.mode).inc()
    if outcome.body_json is not None and outcome.body_json.endswith("}"):
        # The stored text plus the sync state: the same JSON json_response would write.
        text = outcome.body_json[:-1] + ',"sync":{"state":"pending","reason":null}}'
        return web.Response(text=text, status=201, content_type="application/json")
    body = dict(outcome.invoice)
    if body.get("status") == "queued":
        # A draft: stored durably, sealed when a signer returns; never a receipt.
        return web.json_response(body, status=202)
    body["sync"] = {"state": "pending", "reason": None}
    return web.json_response(body, status=201)


def _stored_answer(service: AgentService, job) -> web.Response | None:
    """The stored answer to a retried request (409 if its body differs), or None."""
    body = service.stored_answer(job)
    return web.json_response(body, status=201) if body is not None else None


async def get_invoice(request: web.Request) -> web.Response:
    body = request.app[SERVICE].get_invoice(request.match_info["id"])
    if body is None:
        return problem(404, "Not found", "no invoice with this id", "/problems/not-found")
    if DGI in request.app:  # what the DGI answered, through the cloud (agent/dgi.py)
        body["dgi"] = await request.app[DGI].of(body)
    return web.json_response(body)


# A cursor is a journal sequence number: SQLite's largest INTEGER bounds it (a larger one
# would overflow the query parameter).
MAX_CURSOR = 2**63 - 1


def query_int(text: str) -> int | None:
    """A non-negative integer query parameter in ASCII digits, or None. int() alone would also
    take "-1", " 7", "1_000" and other scripts' digits; 20 digits exceed any bound we check."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    return int(text)


async def list_invoices(request: web.Request) -> web.Response:
    q = request.query
    limit = query_int(q.get("limit", "50"))
    if limit is None or not 1 <= limit <= 500:
        return problem(400, "Bad query", "limit is an integer between 1 and 500", "/problems/bad-query")
    cursor = query_int(q["cursor"]) if q.get("cursor") else None
    if q.get("cursor") and (cursor is None or cursor > MAX_CURSOR):
        return problem(400, "Bad query", f"cursor is a next_cursor this API returned: an integer up to {MAX_CURSOR}",
                       "/problems/bad-query")
    status = q.get("status")
    if status not in (None, "sealed", "queued"):
        return problem(400, "Bad query", "status is sealed or queued", "/problems/bad-query")
    items, nxt = request.app[SERVICE].list_invoices(status=status, since=q.get("since"), limit=limit, cursor=cursor)
    return web.json_response({"items": items, "next_cursor": str(nxt) if nxt is not None else None})


def _qr(payload: str, box_size: int = 10):
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4, box_size=box_size)
    qr.add_data(payload)
    qr.make(fit=True)
    return qr


async def invoice_qr(request: web.Request) -> web.Response:
    body = request.app[SERVICE].get_invoice(request.match_info["id"])
    if body is None:
        return problem(404, "Not found", "no invoice with this id", "/problems/not-found")
    payload = body["security"]["qr_payload"]
    buf = io.BytesIO()
    if request.match_info["fmt"] == "svg":
        _qr(payload).make_image(image_factory=qrcode.image.svg.SvgPathImage).save(buf)
        return web.Response(body=buf.getvalue(), content_type="image/svg+xml")
    _qr(payload, box_size=6).make_image(image_factory=qrcode.image.pure.PyPNGImage).save(buf)
    return web.Response(body=buf.getvalue(), content_type="image/png")


async def health(request: web.Request) -> web.Response:
    body = request.app[SERVICE].health()
    _refresh_gauges(request.app[METRICS], body)
    return web.json_response(body)


async def sync_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].sync_status())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    _refresh_gauges(m, request.app[SERVICE].health())
    return web.Response(body=generate_latest(m["registry"]), headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(config: AgentConfig) -> web.Application:
    """The POS API's routes and middlewares. The service is attached when the daemon has
    composed it (see `attach` and agent/daemon.py)."""
    app = web.Application(middlewares=[problems_middleware, auth_middleware],
                          client_max_size=config.max_body_bytes)
    app[METRICS] = _metrics()
    app.cleanup_ctx.append(answers_ctx(config))
    app.router.add_get("/", status.status_page)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/sync", sync_status)
    app.router.add_post("/v1/invoices", post_invoice)
    app.router.add_get("/v1/invoices", list_invoices)
    app.router.add_get("/v1/invoices/{id}", get_invoice)
    app.router.add_get(r"/v1/invoices/{id}/qr.{fmt:svg|png}", invoice_qr)
    from . import documents
    documents.add_routes(app)
    from ..emcf.routes import add_routes as add_emcf_routes  # the DGI's e-MCF API under /api (own auth, own errors)
    add_emcf_routes(app, config.emcf_pending_seconds)
    return app


def attach(app: web.Application, service: AgentService) -> None:
    """Give the routes their service (and the API keys it stores)."""
    app[SERVICE] = service
    app[KEYS] = keys.KeyRing(service.journal.reader)
