"""The DGI's e-MCF API served on the agent's port (paths under /api/): a drop-in for existing
e-MCF integrations, online or offline, whichever signer seals (docs/emcf-compat.md).

/api is a different API from /v1: its own authentication (the bearer token is a POS API key
allowed on `emcf`, with or without "Bearer ") and its own error shape ({errorCode, errorDesc},
never problem+json). `emcf_middleware` runs first and owns every /api request: it calls the
route's handler itself, so the /v1 key check and problem+json translation never see them.
"""
from __future__ import annotations

import asyncio

import logging
import sqlite3
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from aiohttp import web

from fiscal.models import CREDIT_TYPES
from fiscal.tax import TaxTable

from ..api.app import KEYS, SERVICE
from ..signers.credentials import credential_status
from ..errors import AgentError, IdempotencyConflict, InvalidInvoice, SealingBlocked
from ..service import AgentService
from ..store import repository
from . import mapping
from .mapping import EmcfError
from .pending import PendingStore, PendingWriter
from .prepared import Prepared, PreparedRequests

log = logging.getLogger("stalela.emcf")

PREFIX = "/api/"
LIFETIME = web.AppKey("emcf_pending_seconds", int)
WRITER = web.AppKey("emcf_pending_writer", PendingWriter)
PREPARED = web.AppKey("emcf_prepared", PreparedRequests)
KEY_NAME = web.RequestKey("emcf_key_name", str)

# The e-MCF error code and HTTP status of the agent's own refusals (validation, sealing).
_AGENT_ERRORS = (
    (InvalidInvoice, mapping.INVALID_INVOICE, 400),
    (IdempotencyConflict, mapping.CONFLICT, 409),
    (SealingBlocked, mapping.SEALING_BLOCKED, 503),
)


def add_routes(app: web.Application, lifetime: int) -> None:
    """The /api routes, and the middleware that owns them (first, before the /v1 ones)."""
    app[LIFETIME] = lifetime
    app[WRITER] = writer = PendingWriter()
    app[PREPARED] = PreparedRequests()

    async def close_writer(_app: web.Application) -> None:
        writer.close()

    app.on_cleanup.append(close_writer)
    app.middlewares.insert(0, emcf_middleware)
    r = app.router
    r.add_get("/api/info/status", info_status)
    r.add_get("/api/info/taxGroups", info_tax_groups)
    for name, values in (("invoiceTypes", mapping.INVOICE_TYPES), ("paymentTypes", mapping.PAYMENT_TYPES),
                         ("clientTypes", mapping.CLIENT_TYPES), ("itemTypes", mapping.ITEM_TYPES),
                         ("referenceTypes", mapping.REFERENCE_TYPES), ("currencyRates", [])):
        r.add_get(f"/api/info/{name}", _constant(values))
    r.add_get("/api/invoice", list_pending)
    r.add_post("/api/invoice", post_invoice)
    r.add_put("/api/invoice/{uid}/confirm", confirm_invoice)
    r.add_put("/api/invoice/{uid}/cancel", cancel_invoice)


def _is_emcf(path: str) -> bool:
    return path == "/api" or path.startswith(PREFIX)


def _json(body) -> web.Response:
    return web.Response(text=mapping.dumps(body), content_type="application/json")


def _error(exc: EmcfError) -> web.Response:
    return web.Response(text=mapping.dumps(exc.body()), status=exc.status, content_type="application/json")


@web.middleware
async def emcf_middleware(request: web.Request, handler):
    if not _is_emcf(request.path):
        return await handler(request)
    try:
        request[KEY_NAME] = _authenticate(request)
        # The route's own handler, not the rest of the chain: /v1's middlewares answer in /v1's terms.
        return await request.match_info.handler(request)
    except EmcfError as exc:
        return _error(exc)
    except AgentError as exc:
        return _error(_from_agent_error(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(_from_http(request, exc))
    except sqlite3.Error:  # a pending request could not be written (disk full, I/O error)
        log.exception("journal write failed", extra={"event": "emcf.storage_error", "path": request.path})
        return _error(EmcfError(mapping.STORAGE_FAILURE, "the journal could not be written; nothing was "
                                                         "normalized", 503))
    except Exception:  # never a stack trace to the client
        log.exception("unhandled error", extra={"event": "emcf.error", "path": request.path})
        return _error(EmcfError(mapping.INTERNAL, "the agent hit an unexpected error; it was logged", 500))


def _authenticate(request: web.Request) -> str:
    """The name of the request's POS API key; the key may be sent with or without "Bearer "."""
    header = request.headers.get("Authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else header
    if not token:
        raise EmcfError(mapping.UNAUTHORIZED, "send Authorization: Bearer <API key of this agent>", 401)
    ring = request.app[KEYS]
    # Keys are printable ASCII; a header that is not (surrogate escapes of non-UTF-8 bytes) is a wrong key.
    if not (token.isascii() and token.isprintable()):
        raise EmcfError(mapping.UNAUTHORIZED, "the token is not valid for this agent", 401)
    name = ring.lookup(token, "emcf")
    if name is None:
        if ring.lookup(token, "v1") is not None:
            raise EmcfError(mapping.WRONG_API, "this API key is limited to the POS API (/v1), not the e-MCF API", 403)
        raise EmcfError(mapping.UNAUTHORIZED, "the token is not valid for this agent", 401)
    return name


def _from_agent_error(exc: AgentError) -> EmcfError:
    for cls, code, status in _AGENT_ERRORS:
        if isinstance(exc, cls):
            desc = mapping.describe(exc.detail, exc.extra.get("errors")) if cls is InvalidInvoice else exc.detail
            return EmcfError(code, desc, status)
    return EmcfError(mapping.STORAGE_FAILURE if exc.status == 503 else mapping.INTERNAL, exc.detail,
                     503 if exc.status == 503 else 500)


def _from_http(request: web.Request, exc: web.HTTPException) -> EmcfError:
    if exc.status == 404:
        return EmcfError(mapping.NOT_FOUND, f"no route {request.method} {request.path}", 404)
    if exc.status == 405:
        return EmcfError(mapping.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {request.path}", 405)
    if exc.status == 413:
        return EmcfError(mapping.BODY_TOO_LARGE, "the body is larger than the agent accepts", 413)
    return EmcfError(mapping.BAD_BODY, exc.text or exc.reason, exc.status)


# ------------------------------------------------------------------------------ information
def _today(service: AgentService):
    return datetime.now(service.tz).date()


def _rates(service: AgentService, day=None) -> dict[str, Decimal]:
    """The rate of each tax group in force on `day` (default: today) in the outlet's zone."""
    period = TaxTable.load().period_on(day or _today(service))
    return {g: rule.rate for g, rule in period.groups.items()}


def _nim(service: AgentService) -> str:
    """Who seals the next invoice: the MCF's MID, the delegated credential in use (or next), else the ISF."""
    entry = service.policy.next_entry()
    if entry is not None and entry.name == "device":
        mid = (service.policy.health_of("device") or {}).get("mid")
        if mid:
            return mid
    creds = credential_status(service.journal.reader)
    usable = creds["active"] or (creds["ready"][0] if creds["ready"] else None)
    return usable["id"] if usable else service.journal.isf


async def info_status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    health = service.health()
    now = datetime.now(service.tz).replace(microsecond=0)
    ident = service.identity
    nim = _nim(service)
    sealing = health["status"] != "blocked"
    return _json({
        "status": sealing, "nif": ident.merchant_nif, "nim": nim,
        # Our keys do not expire (they are revoked): a day ahead, re-read at every call.
        "tokenValid": (now + timedelta(days=1)).isoformat(),
        "serverDateTime": now.isoformat(),
        "emcfList": [{"nim": nim, "status": "Actif" if sealing else "Inactif", "shopName": ident.outlet_name,
                      "address1": str(ident.taxpayer.get("address") or ""), "address2": "", "address3": "",
                      "contact1": "", "contact2": "", "contact3": ""}],
    })


async def info_tax_groups(request: web.Request) -> web.Response:
    rates = _rates(request.app[SERVICE])
    return _json({g.lower(): _plain(rate) for g, rate in sorted(rates.items())})


def _plain(rate: Decimal) -> Decimal:
    """16.00 → 16, 1.50 → 1.5 (as the DGI's list writes them)."""
    return rate.to_integral() if rate == rate.to_integral() else rate.normalize()


def _constant(values):
    async def handler(request: web.Request) -> web.Response:
        return _json(values)
    return handler


# ------------------------------------------------------------------------------ billing
def _store(request: web.Request) -> PendingStore:
    return PendingStore(request.app[SERVICE].journal, request.app[LIFETIME], request.app[WRITER])


def request_id_for(uid: str) -> str:
    """The request_id a confirm seals with: one per phase 1 request, so the seal is exactly once.
    (uid is ours and random; the pending row binds it to the key that made it.)"""
    return f"emcf-{uid}"


async def list_pending(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    pending = _store(request).open_requests(request[KEY_NAME])
    return _json({"nif": service.identity.merchant_nif, "nim": _nim(service),
                  "pendingRequestsCount": len(pending), "pendingRequestsList": pending})


async def _body(request: web.Request):
    return mapping.read_json(await request.read())


async def post_invoice(request: web.Request) -> web.Response:
    """Phase 1: validate and compute, record the request; nothing is sealed. The prepared
    invoice is kept for the confirm (agent/emcf/prepared.py)."""
    service = request.app[SERVICE]
    key_name = request[KEY_NAME]
    body = await _body(request)
    uid = str(uuid.uuid4())
    payload = mapping.to_invoice_request(body, request_id=request_id_for(uid), terminal=key_name[:32],
                                         merchant_nif=service.identity.merchant_nif)
    day = _today(service)  # before prepare: a prepare across midnight is recomputed at confirm
    job = service.prepare(payload)  # InvalidInvoice → errorCode 11, in e-MCF field names
    _check_specific_amounts(body, job.lines)
    if job.request["type"] in CREDIT_TYPES:
        _check_original(service, job.request["reference"]["code"])
    answer = mapping.dumps(mapping.phase1_answer(uid, job.totals, _rates(service, day)))
    store = _store(request)
    await store.add(uid=uid, key_name=key_name, request_id=job.request["request_id"], request=job.request,
                    answer=answer, total=job.totals["total"], vtotal=job.totals["vat"])
    now = store.now()
    request.app[PREPARED].keep(uid, Prepared.of(job, day, store.expires_at(now)), now)
    # Debug, as /v1 logs no line per sale either (the journal is the record): a JSON log line
    # cost ≈ 70 µs, a tenth of phase 1.
    log.debug("e-MCF request recorded", extra={"event": "emcf.pending", "uid": uid, "terminal": key_name})
    return web.Response(text=answer, content_type="application/json")


def _check_specific_amounts(body: dict, lines: list[dict]) -> None:
    """A taxSpecificAmount sent with taxSpecificValue must be the line's T.S. as we compute it."""
    for i, item in enumerate(body["items"]):
        if item.get("taxSpecificValue") is None or item.get("taxSpecificAmount") is None:
            continue
        sent = mapping.number(item["taxSpecificAmount"], f"items[{i}].taxSpecificAmount")
        if sent != Decimal(lines[i]["specific_tax"]):
            raise EmcfError(mapping.INVALID_INVOICE, f"items[{i}].taxSpecificAmount: {sent} differs from the "
                                                     f"specific tax computed, {lines[i]['specific_tax']}")


def _check_original(service: AgentService, code: str) -> None:
    """A credit note's original must be a sealed invoice of this outlet (checked again at the seal)."""
    original = repository.credit_note_original(service.journal.reader, code)
    if original is None:
        raise EmcfError(mapping.INVALID_INVOICE, f"reference: {code} is not the code DEF/DGI of an invoice "
                                                 "sealed at this point of sale")
    if original["type"] in CREDIT_TYPES:
        raise EmcfError(mapping.INVALID_INVOICE, "reference: a credit note cannot refer to another credit note")


async def confirm_invoice(request: web.Request) -> web.Response:
    """Phase 2: seal through the signer policy, exactly once; a repeat answers the same elements."""
    service = request.app[SERVICE]
    store = _store(request)
    total, vtotal = mapping.confirm_totals(await _body(request))
    uid = request.match_info["uid"]
    # The request, its state, the totals check, the claim and any seal already in the journal:
    # one transaction (agent/emcf/pending.py).
    confirming = await store.begin_confirm(uid, request[KEY_NAME], total, vtotal)
    found = _confirmable_or_refuse(uid, confirming.found, confirming.now)
    if (total, vtotal) != (Decimal(found.total), Decimal(found.vtotal)):
        raise EmcfError(mapping.TOTALS_DIFFER, f"total {total} and vtotal {vtotal} differ from phase 1's "
                                               f"({found.total}, {found.vtotal}): nothing was normalized", 409)
    if found.state == "confirmed":
        return _confirmed_answer(service, found)
    if not confirming.claimed:  # pragma: no cover - begin_confirm claims every confirmable request
        raise EmcfError(mapping.CONFIRM_IN_PROGRESS, "the request changed state; send the confirm again", 409)
    prepared = request.app[PREPARED].take(uid)
    # Sealed already (a confirm that crashed before recording it): the journal's answer, found
    # by request_id before anything is recomputed or any device or cloud is asked.
    invoice = service.get_invoice(confirming.sealed_id) if confirming.sealed_id is not None else None
    if invoice is None:
        try:
            invoice = await _seal(service, found, prepared)
        except (AgentError, EmcfError) as exc:
            if not str(getattr(exc, "extra", {}).get("reason", "")).endswith("outcome_unknown"):
                await store.release(found.uid)  # nothing sealed: it may be cancelled or confirmed again
            raise
    # Recorded after the answer leaves: the journal already holds the seal (the authority on
    # "was it sealed?"), so a repeated confirm is answered from it even if this write is lost.
    _later(store.confirmed(found.uid, invoice["id"]))
    log.debug("e-MCF request confirmed", extra={"event": "emcf.confirmed", "uid": found.uid,
                                                "invoice_id": invoice["id"], "mode": invoice["mode"]})
    return _json(mapping.confirm_answer(invoice))


_background: set[asyncio.Task] = set()


def _later(write) -> None:
    """Run a bookkeeping write without holding the client's answer; failures are logged."""
    task = asyncio.get_running_loop().create_task(write)
    _background.add(task)

    def done(t: asyncio.Task) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("e-MCF bookkeeping write failed", extra={"event": "emcf.state_write_failed",
                                                                 "error": repr(t.exception())})
    task.add_done_callback(done)


def _confirmed_answer(service: AgentService, found) -> web.Response:
    invoice = service.get_invoice(found.invoice_id)
    if invoice is None:  # its local copy discarded after the cloud acknowledged it (retention)
        raise EmcfError(mapping.ALREADY_CONFIRMED, f"request {found.uid} was normalized long ago (invoice "
                                                   f"{found.invoice_id}); its local copy is gone", 409)
    return _json(mapping.confirm_answer(invoice))


async def _seal(service: AgentService, found, prepared: Prepared | None) -> dict:
    """The phase 1 request sealed by the signer policy: its prepared form when this process kept
    it and the day has not changed; else recomputed from the stored request (the same totals, or
    refused)."""
    if prepared is not None and prepared.day == _today(service):
        job = prepared.job()
    else:
        job = service.prepare(found.request())
        if (job.totals["total"], job.totals["vat"]) != (found.total, found.vtotal):
            # The day's tax table changed between the phases (midnight on a new finance law).
            raise EmcfError(mapping.RATES_CHANGED, "the tax rates changed since phase 1: cancel and send the "
                                                   "invoice again", 409)
    return (await service.seal(job, allow_queue=False)).invoice  # a draft has no code DEF/DGI to answer


def _confirmable_or_refuse(uid: str, found, now: float):
    """The request `uid` of this key, if it can still be confirmed or was confirmed."""
    if found is None:
        raise EmcfError(mapping.UNKNOWN_UID, f"no request {uid} for this point of sale", 404)
    state = found.effective_state(now)
    if state == "cancelled":
        raise EmcfError(mapping.CANCELLED, f"request {uid} was cancelled: nothing was normalized", 409)
    if state == "expired":
        raise EmcfError(mapping.EXPIRED, f"request {uid} expired before its confirm: nothing was normalized; "
                                         "send the invoice again", 409)
    return found


async def cancel_invoice(request: web.Request) -> web.Response:
    store = _store(request)
    uid = request.match_info["uid"]
    found = store.get(uid, request[KEY_NAME])
    if found is None:
        raise EmcfError(mapping.UNKNOWN_UID, f"no request {uid} for this point of sale", 404)
    if await store.cancel(uid):
        request.app[PREPARED].discard(uid)
        log.info("e-MCF request cancelled", extra={"event": "emcf.cancelled", "uid": uid})
        return _json({"uid": uid, "status": "cancelled"})
    found = store.get(uid, request[KEY_NAME])
    state = found.effective_state(store.now())
    if state == "cancelled":  # a repeated cancel
        return _json({"uid": uid, "status": "cancelled"})
    if state == "expired":
        await store.expire(uid)
        raise EmcfError(mapping.EXPIRED, f"request {uid} already expired: nothing was normalized", 409)
    if state == "confirmed":
        raise EmcfError(mapping.ALREADY_CONFIRMED, f"request {uid} is already normalized: issue a credit note "
                                                   "(FA) to reverse it", 409)
    raise EmcfError(mapping.CONFIRM_IN_PROGRESS, f"request {uid} is being confirmed (or its outcome is not "
                                                 "known yet): confirm it again", 409)
