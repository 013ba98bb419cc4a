"""Receipts and reports over HTTP (see docs/reports.md).

Receipts: `GET /v1/invoices/{id}/receipt.txt?width=32|42|48`, `receipt.pdf?format=a4|roll`,
`receipt.escpos?width=32|42|48`. Each fetch is one print: the first print of an invoice is the
original, every later one says DUPLICATA (`?copy=duplicate` forces the mention). Headers
`X-Receipt-Copy` (original|duplicate) and `X-Receipt-Print` (1, 2, ...) tell the POS which it got.
A queued draft has no receipt (409).

Reports: `POST /v1/reports/x` (200, nothing stored), `POST /v1/reports/z` (201, sealed and
stored), `GET /v1/reports?type=Z`, `GET /v1/reports/{id}` (+ `.txt`, `.pdf`),
`GET /v1/reports/x.txt|pdf`, `GET /v1/reports/a?from=&to=` (+ `a.txt`, `a.pdf`).
"""
from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from aiohttp import web

from ..receipts import (PDF_FORMATS, WIDTHS, device_info_of, receipt_for, record_print, render_escpos,
                        render_pdf, render_text)
from ..reports import BadPeriod, a_report_for, get_report, list_reports, run_z, x_report
from fiscal.report_print import report_pdf, report_text
from ..store.db import connect
from fiscal.runtime.problems import problem


# Rendering (receipts and reports, text, PDF or ESC/POS) runs in these threads, not on the event
# loop: a 500-item receipt is milliseconds of CPU, and with a dozen rendered on the loop at once
# every seal waited behind them (issue 10 measured one seal going from 16 ms to 730 ms). Two
# threads: the work is Python under the GIL, so more would only queue for the interpreter beside
# the loop, not finish sooner.
RENDERER = web.AppKey("renderer", ThreadPoolExecutor)
RENDER_THREADS = 2


def _render(request: web.Request, fn, *args, **kwargs):
    """fn(*args, **kwargs) in the app's render threads (awaitable)."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(request.app[RENDERER], functools.partial(fn, *args, **kwargs))


def _service(request: web.Request):
    from .app import SERVICE

    return request.app[SERVICE]


def _bad_query(detail: str) -> web.Response:
    return problem(400, "Bad query", detail, "/problems/bad-query")


async def _receipt(request: web.Request, kind: str) -> web.Response:
    service = _service(request)
    q = request.query
    width = 42 if kind == "txt" else 48
    if "width" in q:
        if q["width"] not in {str(w) for w in WIDTHS}:
            return _bad_query(f"width must be one of {', '.join(map(str, WIDTHS))}")
        width = int(q["width"])
    fmt = q.get("format", "roll")
    if kind == "pdf" and fmt not in PDF_FORMATS:
        return _bad_query("format must be a4 or roll")
    copy = q.get("copy")
    if copy not in (None, "", "duplicate"):
        return _bad_query("copy takes only the value duplicate")
    invoice = service.get_invoice(request.match_info["id"])
    if invoice is None:
        return problem(404, "Not found", "no invoice with this id", "/problems/not-found")
    if invoice.get("status") != "sealed":
        return problem(409, "Not sealed", "this invoice is a queued draft: it has no security elements and "
                       "no receipt until a signer seals it", "/problems/not-sealed")
    n = await asyncio.wrap_future(service.journal.run_in_writer(
        lambda conn: record_print(conn, invoice["id"], datetime.now(timezone.utc))))
    duplicate = n > 1 or copy == "duplicate"
    headers = {"X-Receipt-Copy": "duplicate" if duplicate else "original", "X-Receipt-Print": str(n)}
    data = await _render(request, _receipt_bytes, kind, invoice, service.identity, duplicate,
                         device_info_of(service), width, fmt)
    if kind == "txt":
        return web.Response(body=data, content_type="text/plain", charset="utf-8", headers=headers)
    if kind == "pdf":
        return web.Response(body=data, content_type="application/pdf", headers=headers)
    return web.Response(body=data, content_type="application/octet-stream", headers=headers)


def _receipt_bytes(kind: str, invoice: dict, identity, duplicate: bool, device_info: dict | None,
                   width: int, fmt: str) -> bytes:
    """The receipt laid out and rendered (in a render thread: both steps walk every item)."""
    receipt = receipt_for(invoice, identity, duplicate=duplicate, device_info=device_info)
    if kind == "txt":
        return render_text(receipt, width).encode("utf-8")
    if kind == "pdf":
        return render_pdf(receipt, fmt)
    return render_escpos(receipt, width)


async def receipt_txt(request: web.Request) -> web.Response:
    return await _receipt(request, "txt")


async def receipt_pdf(request: web.Request) -> web.Response:
    return await _receipt(request, "pdf")


async def receipt_escpos(request: web.Request) -> web.Response:
    return await _receipt(request, "escpos")


def _with_reader(service, fn):
    """Run fn(conn) on a fresh read-only connection in a worker thread (reports can be large)."""
    def work():
        conn = connect(service.config.db_path, readonly=True)
        try:
            return fn(conn)
        finally:
            conn.close()
    return asyncio.to_thread(work)


async def _as(request: web.Request, body: dict, fmt: str | None, status: int = 200) -> web.Response:
    """A report as JSON, text or PDF, rendered in a render thread (an A report can be long)."""
    data = await _render(request, _report_bytes, body, fmt)
    if fmt == "txt":
        return web.Response(body=data, content_type="text/plain", charset="utf-8", status=status)
    if fmt == "pdf":
        return web.Response(body=data, content_type="application/pdf", status=status)
    return web.Response(body=data, content_type="application/json", charset="utf-8", status=status)


def _report_bytes(body: dict, fmt: str | None) -> bytes:
    if fmt == "txt":
        return report_text(body).encode("utf-8")
    if fmt == "pdf":
        return report_pdf(body)
    return json.dumps(body).encode("utf-8")  # what web.json_response writes


async def post_x(request: web.Request) -> web.Response:
    service = _service(request)
    health = service.health()
    body = await _with_reader(service, lambda c: x_report(c, service.identity, health, tz=service.tz))
    return await _as(request, body, None)


async def get_x(request: web.Request) -> web.Response:
    service = _service(request)
    health = service.health()
    body = await _with_reader(service, lambda c: x_report(c, service.identity, health, tz=service.tz))
    return await _as(request, body, request.match_info["fmt"])


async def post_z(request: web.Request) -> web.Response:
    body = await run_z(_service(request))
    return web.json_response(body, status=201)


async def get_a(request: web.Request) -> web.Response:
    service = _service(request)
    q = request.query
    try:
        body = await _with_reader(service, lambda c: a_report_for(c, service.identity, service.tz,
                                                                   q.get("from"), q.get("to")))
    except BadPeriod as exc:
        return _bad_query(str(exc))
    return await _as(request, body, request.match_info.get("fmt"))


async def list_all(request: web.Request) -> web.Response:
    kind = request.query.get("type")
    if kind not in (None, "Z", "X"):
        return _bad_query("type is Z or X")
    from .app import query_int

    limit = query_int(request.query.get("limit", "100"))
    if limit is None:
        return _bad_query("limit is an integer")
    if not 1 <= limit <= 1000:
        return _bad_query("limit must be between 1 and 1000")
    items = list_reports(_service(request).journal.reader, kind, limit)
    return web.json_response({"items": items})


async def get_one(request: web.Request) -> web.Response:
    body = get_report(_service(request).journal.reader, request.match_info["id"])
    if body is None:
        return problem(404, "Not found", "no report with this id", "/problems/not-found")
    return await _as(request, body, request.match_info.get("fmt"))


async def _stop_renderer(app: web.Application) -> None:
    app[RENDERER].shutdown(wait=False, cancel_futures=True)


def add_routes(app: web.Application) -> None:
    app[RENDERER] = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")
    app.on_cleanup.append(_stop_renderer)
    app.add_routes([
        web.get("/v1/invoices/{id}/receipt.txt", receipt_txt),
        web.get("/v1/invoices/{id}/receipt.pdf", receipt_pdf),
        web.get("/v1/invoices/{id}/receipt.escpos", receipt_escpos),
        web.post("/v1/reports/x", post_x),
        web.post("/v1/reports/z", post_z),
        web.get("/v1/reports", list_all),
        web.get("/v1/reports/a", get_a),
        web.get(r"/v1/reports/a.{fmt:txt|pdf}", get_a),
        web.get(r"/v1/reports/x.{fmt:txt|pdf}", get_x),
        web.get(r"/v1/reports/{id:[0-9a-f-]{36}}.{fmt:txt|pdf}", get_one),
        web.get(r"/v1/reports/{id:[0-9a-f-]{36}}", get_one),
        web.get("/v1/reports/{id}", get_one),
    ])
