"""The cloud's HTTP API (`/v1/...`, JSON, RFC 9457 problems). See docs/cloud-api.md."""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any, AsyncIterator, TypeVar

from aiohttp import web
from pydantic import BaseModel

from fiscal.runtime.problems import problem

from .bodies import (CredentialBody, DeviceBody, EnrollBody, MerchantBody, OutletBody, RevokeBody,
                     SealBody, SupersededBody, TokenBody, parse_body)
from fiscal.credential import BlockClosure

from .config import CloudConfig, parse_duration
from .errors import PROBLEM_BASE, CloudError, Forbidden, Invalid, NotFound, Unauthorized
from .logs import event, log
from .metrics import CONTENT_TYPE, CloudMetrics
from .registry import PROVISIONING_PREFIX
from . import dashboard, forwarding, reports
from .service import CloudService

CONFIG = web.AppKey("config", CloudConfig)
METRICS = web.AppKey("metrics", CloudMetrics)
SERVICE = web.AppKey("service", CloudService)
CALLER = web.RequestKey("caller", dict)

B = TypeVar("B", bound=BaseModel)

# -- errors and logging ---------------------------------------------------------------------


def _problem_for(exc: CloudError) -> web.Response:
    response = problem(exc.status, exc.title, exc.detail, exc.type_uri, errors=exc.errors)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="stalela-cloud"'
    elif exc.status == 503:
        response.headers["Retry-After"] = "5"  # the database's outage: a few seconds, then again
    return response


@web.middleware
async def problems_and_log(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except CloudError as exc:
        response = _problem_for(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http_error")
        detail = {404: "no such endpoint", 413: "the request body is larger than the service accepts"}.get(
            exc.status, exc.reason)
        response = problem(exc.status, exc.reason, detail, PROBLEM_BASE + kind)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.error("http.unhandled", exc_info=True, extra={"fields": {"path": request.path}})
        response = problem(500, "Internal Server Error", "the service failed; the error was logged",
                           PROBLEM_BASE + "internal")
    caller = request.get(CALLER)
    event("http.request", method=request.method, path=request.path, status=response.status,
          ms=round((time.perf_counter() - started) * 1000, 2),
          caller=caller and (caller["id"] if caller is not ADMIN else "admin"))
    return response


# -- request helpers ------------------------------------------------------------------------

ADMIN: dict = {"id": "admin"}
PROVISIONER: dict = {"id": "provisioning-token"}  # for the request log: never the token itself


async def _body(request: web.Request, model: type[B]) -> B:
    raw = await request.read()  # raises 413 beyond client_max_size
    return parse_body(raw, model)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("unauthorized", "send `Authorization: Bearer <token>`")
    # Tokens are printable ASCII. aiohttp passes header bytes that are not UTF-8 on as surrogate
    # escapes, which neither the comparison nor the hash can encode: such a token is unknown.
    if not (token.isascii() and token.isprintable()):
        raise Unauthorized("unauthorized", "unknown or retired token")
    return token


async def _caller(request: web.Request) -> dict:
    """The authenticated caller: an agent row, or ADMIN."""
    token = _bearer(request)
    service = request.app[SERVICE]
    if hmac.compare_digest(token.encode(), service.admin_token.encode()):
        request[CALLER] = ADMIN
        return ADMIN
    agent = await service.call(service.authenticate, token)
    if agent is None:
        raise Unauthorized("unauthorized", "unknown or retired token")
    request[CALLER] = agent
    return agent


async def _agent(request: web.Request) -> dict:
    caller = await _caller(request)
    if caller is ADMIN:
        raise Forbidden("agent_only", "this operation is done by an enrolled agent, not the admin")
    return caller


async def _admin(request: web.Request) -> None:
    if await _caller(request) is not ADMIN:
        raise Forbidden("admin_only", "this operation needs the admin token")


async def _outlet_scope(request: web.Request) -> str:
    """The outlet in the path, if the caller may see it. Another tenant's outlet is 'not found'."""
    caller = await _caller(request)
    outlet_id = request.match_info["outlet_id"]
    if caller is not ADMIN and caller["outlet_id"] != outlet_id:
        raise NotFound("outlet_not_found", f"no outlet {outlet_id}")
    return outlet_id


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    # ASCII digits only: isdigit() alone takes "²" (which int() refuses) and other scripts' digits;
    # more than 20 digits is out of any range here (and int() refuses beyond 4300).
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or not lo <= int(text) <= hi:
        raise Invalid("bad_parameter", f"`{name}` must be an integer between {lo} and {hi}")
    return int(text)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


# -- handlers -------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """Liveness and the database's state: 503 when the database does not answer."""
    service = request.app[SERVICE]
    try:
        await service.call(service.ping)
    except Exception as exc:  # whatever the backend raises: the answer says the database is down
        return web.json_response({"status": "degraded", "service": "stalela-cloud", "api": "v1",
                                  "database": {"up": False, "error": (exc.__cause__ or exc).__class__.__name__}},
                                 status=503)
    return _json({"status": "ok", "service": "stalela-cloud", "api": "v1", "database": {"up": True}})


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await service.call(request.app[METRICS].scrape, service.store)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def issuer(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE].issuer_info())


async def enroll(request: web.Request) -> web.Response:
    body = await _body(request, EnrollBody)
    service = request.app[SERVICE]
    return _json(await service.call(service.enroll, body.token, body.agent_public_key, body.label), 201)


async def heartbeat(request: web.Request) -> web.Response:
    agent = await _agent(request)
    service = request.app[SERVICE]
    return _json(await service.call(service.heartbeat, agent))


async def issue_credential(request: web.Request) -> web.Response:
    agent = await _agent(request)
    body = await _body(request, CredentialBody)
    service = request.app[SERVICE]
    document, created = await service.call(service.issue_credential, agent, body.closure,
                                           body.block_size, body.request_id)
    return _json(document, 201 if created else 200)


async def close_credential(request: web.Request) -> web.Response:
    agent = await _agent(request)
    closure = await _body(request, BlockClosure)
    if closure.credential_id != request.match_info["credential_id"]:
        raise Invalid("bad_closure", "the closure names another credential than the URL")
    service = request.app[SERVICE]
    return _json(await service.call(service.close_credential, agent, closure))


async def get_credential(request: web.Request) -> web.Response:
    caller = await _caller(request)
    service = request.app[SERVICE]
    scope = None if caller is ADMIN else caller["outlet_id"]
    return _json(await service.call(service.credential, request.match_info["credential_id"], scope))


async def seal(request: web.Request) -> web.Response:
    agent = await _agent(request)
    body = await _body(request, SealBody)
    service = request.app[SERVICE]
    invoice, created = await service.call(service.seal, agent, body.invoice, body.isf, body.id, body.deadline)
    if created:
        request.app[METRICS].seals.labels(request.app[METRICS].instance).inc()
    return _json(invoice, 201 if created else 200)


async def seal_superseded(request: web.Request) -> web.Response:
    agent = await _agent(request)
    body = await _body(request, SupersededBody)
    service = request.app[SERVICE]
    return _json(await service.call(service.superseded, agent, request.match_info["request_id"],
                                    body.authority_id, body.fiscal_number))


async def reconcile(request: web.Request) -> web.Response:
    agent = await _agent(request)
    raw = await request.read()  # raises 413 beyond client_max_size
    service = request.app[SERVICE]
    # Parsed (or cut into chunks for the verifier) off the event loop: see service.reconcile_upload.
    answer = await service.call(service.reconcile_upload, agent, raw)
    request.app[METRICS].count_reconcile(answer)
    return _json(answer)


async def outlet(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    return _json(await service.call(service.outlet, outlet_id))


async def outlet_ledger(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, 1000)
    service = request.app[SERVICE]
    return _json(await service.call(service.ledger_page, outlet_id, after, limit))


async def outlet_ledger_verify(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    return _json(await service.call(service.verify_ledger, outlet_id))


async def outlet_summary(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    return _json(await service.call(service.summary, outlet_id, request.query.get("from"),
                                    request.query.get("to")))


async def outlet_report(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    return _json(await service.call(reports.outlet_report, service, request.match_info["kind"], outlet_id,
                                    request.query.get("from"), request.query.get("to")))


async def outlet_flags(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    open_only = request.query.get("open") in ("1", "true")
    return _json({"outlet_id": outlet_id, "flags": await service.call(service.flags, outlet_id, open_only)})


async def outlet_rejections(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    service = request.app[SERVICE]
    return _json({"outlet_id": outlet_id,
                  "rejections": await service.call(service.rejections, outlet_id, limit)})


async def outlet_devices(request: web.Request) -> web.Response:
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    return _json({"outlet_id": outlet_id, "devices": await service.call(service.devices, outlet_id)})


async def provision_device(request: web.Request) -> web.Response:
    """Bind an MCF: the operator (admin token, names `outlet_id`) or a technician holding a
    provisioning token the operator issued for one outlet. An agent's own token cannot."""
    token = _bearer(request)
    service = request.app[SERVICE]
    if token.startswith(PROVISIONING_PREFIX) and not hmac.compare_digest(token.encode(), service.admin_token.encode()):
        request[CALLER] = PROVISIONER
        body = await _body(request, DeviceBody)
        device, created = await service.call(service.provision_with_token, token, body.mid, body.nif,
                                             body.status, dict(body.firmware), body.outlet_id)
        return _json(device, 201 if created else 200)
    caller = await _caller(request)
    if caller is not ADMIN:
        raise Forbidden("operator_only", "devices are bound by the operator: the admin API, `stalela cloud "
                        "devices bind`, or a provisioning token issued for the outlet")
    body = await _body(request, DeviceBody)
    if body.outlet_id is None:
        raise Invalid("outlet_required", "the admin names the device's `outlet_id`")
    device, created = await service.call(service.bind_device, body.outlet_id, body.mid, body.nif,
                                         body.status, dict(body.firmware))
    return _json(device, 201 if created else 200)


async def outlet_dgi(request: web.Request) -> web.Response:
    """DGI forwarding of one outlet (admin and the outlet's agent): queue, counts, quarantine."""
    outlet_id = await _outlet_scope(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    service = request.app[SERVICE]
    return _json(await service.call(forwarding.outlet_status, service.store, outlet_id, limit))


async def outlet_invoice_dgi(request: web.Request) -> web.Response:
    """What the DGI answered for one invoice: `{state, code, counters, nim, ...}`."""
    outlet_id = await _outlet_scope(request)
    service = request.app[SERVICE]
    return _json(await service.call(forwarding.invoice_dgi, service.store, outlet_id,
                                    request.match_info["invoice_id"]))


async def admin_dgi_release(request: web.Request) -> web.Response:
    await _admin(request)
    outlet_id = request.match_info["outlet_id"]
    text = request.query.get("seq")
    seq = None if text in (None, "") else _int_param(request, "seq", 1, 1, 2**62)
    service = request.app[SERVICE]
    released = await service.call(forwarding.release, service.store, outlet_id, seq, "operator (api)", service.now())
    return _json({"outlet_id": outlet_id, "released": released})


# -- admin ----------------------------------------------------------------------------------


async def admin_add_merchant(request: web.Request) -> web.Response:
    await _admin(request)
    body = await _body(request, MerchantBody)
    service = request.app[SERVICE]
    taxpayer = body.taxpayer.model_dump(exclude_none=True)
    return _json(await service.call(service.add_merchant, body.nif, body.name, taxpayer), 201)


async def admin_outlets(request: web.Request) -> web.Response:
    await _admin(request)
    service = request.app[SERVICE]
    return _json({"outlets": await service.call(service.outlets)})


async def admin_add_outlet(request: web.Request) -> web.Response:
    await _admin(request)
    body = await _body(request, OutletBody)
    service = request.app[SERVICE]
    return _json(await service.call(service.add_outlet, body.id, body.merchant_nif, body.name,
                                    body.time_zone, body.isf), 201)


async def admin_create_token(request: web.Request) -> web.Response:
    await _admin(request)
    body = await _body(request, TokenBody)
    service = request.app[SERVICE]
    try:
        ttl = parse_duration(body.ttl) if body.ttl else None
    except ValueError as exc:  # the model checked the form; parse_duration also refuses zero ("0s")
        raise Invalid("bad_ttl", f"{exc}; the token lifetime must be positive") from None
    return _json(await service.call(service.create_token, request.match_info["outlet_id"], ttl), 201)


async def admin_merchant_token(request: web.Request) -> web.Response:
    """A read-only dashboard token for a merchant's staff (shown once)."""
    await _admin(request)
    body = await _body(request, TokenBody)
    try:
        ttl = parse_duration(body.ttl) if body.ttl else None
    except ValueError as exc:
        raise Invalid("bad_ttl", f"{exc}; the token lifetime must be positive") from None
    service = request.app[SERVICE]
    return _json(await service.call(service.create_merchant_token, request.match_info["nif"], ttl), 201)


async def admin_revoke_merchant_tokens(request: web.Request) -> web.Response:
    await _admin(request)
    service = request.app[SERVICE]
    return _json(await service.call(service.revoke_merchant_tokens, request.match_info["nif"]))


async def admin_bind_device(request: web.Request) -> web.Response:
    await _admin(request)
    body = await _body(request, DeviceBody)
    outlet_id = request.match_info["outlet_id"]
    if body.outlet_id is not None and body.outlet_id != outlet_id:
        raise Invalid("bad_parameter", "`outlet_id` in the body differs from the URL's")
    service = request.app[SERVICE]
    device, created = await service.call(service.bind_device, outlet_id, body.mid, body.nif, body.status,
                                         dict(body.firmware))
    return _json(device, 201 if created else 200)


async def admin_unbind_device(request: web.Request) -> web.Response:
    await _admin(request)
    service = request.app[SERVICE]
    return _json(await service.call(service.unbind_device, request.match_info["outlet_id"],
                                    request.match_info["mid"]))


async def admin_provisioning_token(request: web.Request) -> web.Response:
    await _admin(request)
    body = await _body(request, TokenBody)
    service = request.app[SERVICE]
    ttl = parse_duration(body.ttl) if body.ttl else None
    return _json(await service.call(service.create_provisioning_token, request.match_info["outlet_id"], ttl), 201)


async def admin_revoke(request: web.Request) -> web.Response:
    await _admin(request)
    body = await _body(request, RevokeBody)
    service = request.app[SERVICE]
    return _json(await service.call(service.revoke_credential, request.match_info["credential_id"],
                                    body.reason, body.effective_at))


async def admin_flags(request: web.Request) -> web.Response:
    await _admin(request)
    service = request.app[SERVICE]
    open_only = request.query.get("open") in ("1", "true")
    return _json({"flags": await service.call(service.flags, None, open_only)})


async def admin_audit(request: web.Request) -> web.Response:
    await _admin(request)
    service = request.app[SERVICE]
    return _json({"new_flags": await service.call(service.audit)})


# -- application ----------------------------------------------------------------------------


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app.get(SERVICE)
    owned = service is None
    if owned:
        service = CloudService(app[CONFIG])
        app[SERVICE] = service
    yield
    if owned:
        await asyncio.get_running_loop().run_in_executor(None, service.close)


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """Periodic gap detection, so expiry-based gaps are flagged even when no agent calls."""
    interval = app[CONFIG].audit_interval
    if interval <= 0:
        yield
        return
    service = app[SERVICE]

    async def loop() -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await service.call(service.periodic_audit)
            except Exception:
                if not failing:  # the first failure and the recovery, not every attempt
                    log.error("audit.failed", exc_info=True)
                failing = True
            else:
                if failing:
                    event("audit.recovered")
                failing = False

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def init_app(config: CloudConfig, service: CloudService | None = None) -> web.Application:
    """The cloud API. Pass `service` to share one already open (it is then not closed here)."""
    app = web.Application(client_max_size=config.max_body, middlewares=[problems_and_log])
    app[CONFIG] = config
    app[METRICS] = CloudMetrics()
    if service is not None:
        app[SERVICE] = service
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_audit_ctx)
    r = app.router
    r.add_get("/v1/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/issuer", issuer)
    r.add_post("/v1/enroll", enroll)
    r.add_post("/v1/agents/me/heartbeat", heartbeat)
    r.add_post("/v1/credentials", issue_credential)
    r.add_get("/v1/credentials/{credential_id}", get_credential)
    r.add_post("/v1/credentials/{credential_id}/closure", close_credential)
    r.add_post("/v1/seal", seal)
    r.add_post("/v1/seal-requests/{request_id}/superseded", seal_superseded)
    r.add_post("/v1/reconcile", reconcile)
    r.add_post("/v1/devices", provision_device)
    r.add_get("/v1/outlets/{outlet_id}", outlet)
    r.add_get("/v1/outlets/{outlet_id}/ledger", outlet_ledger)
    r.add_get("/v1/outlets/{outlet_id}/ledger/verify", outlet_ledger_verify)
    r.add_get("/v1/outlets/{outlet_id}/summary", outlet_summary)
    r.add_get("/v1/outlets/{outlet_id}/reports/{kind:x|a}", outlet_report)
    r.add_get("/v1/outlets/{outlet_id}/flags", outlet_flags)
    r.add_get("/v1/outlets/{outlet_id}/rejections", outlet_rejections)
    r.add_get("/v1/outlets/{outlet_id}/devices", outlet_devices)
    r.add_get("/v1/outlets/{outlet_id}/dgi", outlet_dgi)
    r.add_get("/v1/outlets/{outlet_id}/invoices/{invoice_id}/dgi", outlet_invoice_dgi)
    r.add_post("/v1/admin/outlets/{outlet_id}/dgi/release", admin_dgi_release)
    r.add_post("/v1/admin/merchants", admin_add_merchant)
    r.add_get("/v1/admin/outlets", admin_outlets)
    r.add_post("/v1/admin/outlets", admin_add_outlet)
    r.add_post("/v1/admin/merchants/{nif}/dashboard-tokens", admin_merchant_token)
    r.add_delete("/v1/admin/merchants/{nif}/dashboard-tokens", admin_revoke_merchant_tokens)
    r.add_post("/v1/admin/outlets/{outlet_id}/tokens", admin_create_token)
    r.add_post("/v1/admin/outlets/{outlet_id}/provisioning-tokens", admin_provisioning_token)
    r.add_post("/v1/admin/outlets/{outlet_id}/devices", admin_bind_device)
    r.add_delete("/v1/admin/outlets/{outlet_id}/devices/{mid}", admin_unbind_device)
    r.add_post("/v1/admin/credentials/{credential_id}/revoke", admin_revoke)
    r.add_get("/v1/admin/flags", admin_flags)
    r.add_post("/v1/admin/audit", admin_audit)
    dashboard.setup(app)  # the operations dashboard's pages under /dashboard/
    return app

