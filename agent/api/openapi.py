"""The OpenAPI document, generated from the pydantic models (never written by hand)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from fiscal.models import InvoiceRequest, SealedInvoice

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}


# The e-MCF API under /api (agent/emcf, docs/emcf-compat.md): the DGI's shapes, JSON numbers for
# amounts, and {errorCode, errorDesc} instead of problem+json.
_NUMBER = {"type": "number", "minimum": 0}
_TEXT_OR_NULL = {"type": ["string", "null"]}
EMCF_SCHEMAS: dict[str, Any] = {
    "EmcfError": {"type": "object", "required": ["errorCode", "errorDesc"],
                  "properties": {"errorCode": {"type": "string"}, "errorDesc": {"type": "string"}}},
    "EmcfItem": {"type": "object", "required": ["name", "type", "price", "taxGroup"], "properties": {
        "code": _TEXT_OR_NULL, "name": {"type": "string"}, "type": {"type": "string", "enum": ["BIE", "SER", "TAX"]},
        "price": _NUMBER, "quantity": {"type": ["number", "null"], "minimum": 0},
        "taxGroup": {"type": "string", "pattern": "^[A-Pa-p]$"},
        "originalPrice": {"type": ["number", "null"], "minimum": 0}, "priceModification": _TEXT_OR_NULL,
        "taxSpecificValue": {"type": ["number", "null"], "minimum": 0},
        "taxSpecificAmount": {"type": ["number", "null"], "minimum": 0}}},
    "EmcfInvoice": {"type": "object", "required": ["rn", "type", "items", "operator"], "properties": {
        "nif": _TEXT_OR_NULL, "rn": {"type": "string"}, "mode": {"type": ["string", "null"], "enum": ["ttc", "ht", None]},
        "isf": _TEXT_OR_NULL, "type": {"type": "string", "enum": ["FV", "FT", "FA", "EV", "ET", "EA"]},
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/EmcfItem"}},
        "operator": {"type": "object", "properties": {"id": {"type": ["string", "integer", "null"]},
                                                      "name": {"type": "string"}}},
        "client": {"type": ["object", "null"], "properties": {
            "nif": _TEXT_OR_NULL, "name": _TEXT_OR_NULL, "contact": _TEXT_OR_NULL, "address": _TEXT_OR_NULL,
            "type": {"type": ["string", "null"], "enum": ["PP", "PM", "PC", "PL", "AO", None]}}},
        "payment": {"type": ["array", "null"], "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "amount": {"type": ["number", "null"], "minimum": 0}}}},
        "reference": _TEXT_OR_NULL, "referenceType": _TEXT_OR_NULL, "referenceDesc": _TEXT_OR_NULL,
        "curCode": _TEXT_OR_NULL, "curRate": {"type": ["number", "null"], "minimum": 0}, "curDate": _TEXT_OR_NULL,
        **{f"cmt{c}": _TEXT_OR_NULL for c in "abcdefgh"}}},
    "EmcfPhase1": {"type": "object", "required": ["uid", "total", "vtotal"], "description":
                   "uid, total, vtotal, ts, and per tax group x: tx (rate), tax (TTC), hax (HT), vax (VAT)",
                   "properties": {"uid": {"type": "string"}, "total": {"type": "number"}, "vtotal": {"type": "number"},
                                  "ts": {"type": "number"}}, "additionalProperties": {"type": "number"}},
    "EmcfConfirm": {"type": "object", "required": ["total", "vtotal"],
                    "properties": {"total": _NUMBER, "vtotal": _NUMBER}},
    "EmcfSealed": {"type": "object", "required": ["dateTime", "qrCode", "codeDEFDGI", "counters", "nim"],
                   "properties": {"dateTime": {"type": "string"}, "qrCode": {"type": "string"},
                                  "codeDEFDGI": {"type": "string"}, "counters": {"type": "string"},
                                  "nim": {"type": "string"}}},
}


def _json_schema(name: str, desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _emcf_paths(auth: list) -> dict[str, Any]:
    def err(desc: str) -> dict[str, Any]:
        return _json_schema("EmcfError", desc)

    uid = [{"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths: dict[str, Any] = {
        "/api/info/status": {"get": {"summary": "e-MCF: point of sale status (nif, nim, serverDateTime, emcfList)",
                                     "security": auth, "responses": {"200": {"description": "status"},
                                                                     "401": err("missing or wrong key")}}},
        "/api/info/taxGroups": {"get": {"summary": "e-MCF: tax rates by lower-case group letter, at today's date",
                                        "security": auth, "responses": {"200": {"description": "rates"}}}},
        "/api/invoice": {
            "get": {"summary": "e-MCF: this key's pending requests", "security": auth,
                    "responses": {"200": {"description": "{nif, nim, pendingRequestsCount, pendingRequestsList}"}}},
            "post": {"summary": "e-MCF phase 1: validate and compute (nothing is normalized)", "security": auth,
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/EmcfInvoice"}}}},
                     "responses": {"200": _json_schema("EmcfPhase1", "the computed totals and the uid"),
                                   "400": err("invalid invoice"), "401": err("missing or wrong key"),
                                   "403": err("key not allowed on this API, or another taxpayer's nif"),
                                   "429": err("too many pending requests")}}},
        "/api/invoice/{uid}/confirm": {"put": {
            "summary": "e-MCF phase 2: seal through the signer policy, exactly once", "security": auth,
            "parameters": uid, "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/EmcfConfirm"}}}},
            "responses": {"200": _json_schema("EmcfSealed", "the security elements"), "400": err("bad body"),
                          "404": err("unknown uid"), "409": err("totals differ, cancelled or expired"),
                          "503": err("no signer can seal")}}},
        "/api/invoice/{uid}/cancel": {"put": {
            "summary": "e-MCF: drop a pending request", "security": auth, "parameters": uid,
            "responses": {"200": {"description": "cancelled"}, "404": err("unknown uid"),
                          "409": err("already confirmed or expired")}}},
    }
    for name in ("invoiceTypes", "paymentTypes", "clientTypes", "itemTypes", "referenceTypes", "currencyRates"):
        paths[f"/api/info/{name}"] = {"get": {"summary": f"e-MCF: {name} ([{{type, description}}])",
                                              "security": auth, "responses": {"200": {"description": name}}}}
    return paths


def _problem(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(InvoiceRequest, "validation"), (SealedInvoice, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    components = dict(schemas.get("$defs", {}))
    components["Problem"] = PROBLEM
    components.update(EMCF_SCHEMAS)
    # GET /v1/invoices/{id} adds the DGI's answer through the cloud (agent/dgi.py).
    from ..dgi import DGI_SCHEMA
    sealed_schema = dict(components["SealedInvoice"])
    sealed_schema["properties"] = {**sealed_schema["properties"], "dgi": DGI_SCHEMA}
    components["SealedInvoice"] = sealed_schema
    sealed = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/SealedInvoice"}}}}
    auth = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stalela Edge agent — POS API (/v1) and local e-MCF API (/api)", "version": "1"},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/health": {"get": {"summary": "Signer and sync health (no key needed)", "security": [],
                                   "responses": {"200": {"description": "health"}}}},
            "/v1/invoices": {
                "post": {
                    "summary": "Seal an invoice", "security": auth,
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/InvoiceRequest"}}}},
                    "responses": {
                        "201": {"description": "sealed", **sealed},
                        "401": _problem("missing or wrong API key"),
                        "409": _problem("request_id reused with a different body"),
                        "413": _problem("body larger than the limit"),
                        "422": _problem("invalid invoice"),
                        "503": _problem("sealing blocked or journal unavailable"),
                    },
                },
                "get": {
                    "summary": "List invoices, newest first", "security": auth,
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["sealed", "queued"]}},
                        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "a page of invoices"}, "400": _problem("bad query")},
                },
            },
            "/v1/invoices/{id}": {"get": {
                "summary": "One invoice as stored", "security": auth,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the invoice", **sealed}, "404": _problem("unknown id")}}},
            "/v1/invoices/{id}/qr.svg": {"get": {
                "summary": "QR code (error correction M), SVG", "security": auth,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}, "404": _problem("unknown id")}}},
            "/v1/invoices/{id}/qr.png": {"get": {
                "summary": "QR code (error correction M), PNG", "security": auth,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}, "404": _problem("unknown id")}}},
            "/v1/sync": {"get": {"summary": "Outbox to the cloud ledger: pending, quarantined, last success/error",
                                 "security": auth, "responses": {"200": {"description": "outbox status"}}}},
            **{f"/v1/invoices/{{id}}/receipt.{fmt}": {"get": {
                "summary": f"Printable normalized-invoice receipt ({desc})", "security": auth,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}] + extra,
                "responses": {"200": {"description": desc, "content": {ctype: {}}}, "400": _problem("bad parameter"),
                              "404": _problem("unknown id"), "409": _problem("a queued draft has no receipt")}}}
               for fmt, desc, ctype, extra in (
                   ("txt", "text for 32/42/48-column printers", "text/plain",
                    [{"name": "width", "in": "query", "schema": {"type": "integer", "enum": [32, 42, 48]}},
                     {"name": "copy", "in": "query", "schema": {"type": "string", "enum": ["duplicate"]}}]),
                   ("pdf", "PDF, A4 or 80 mm roll", "application/pdf",
                    [{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["a4", "roll"]}}]),
                   ("escpos", "ESC/POS bytes for thermal printers", "application/octet-stream", []))},
            "/v1/reports/x": {"post": {"summary": "X report: running totals since the last Z (changes nothing)",
                                       "security": auth, "responses": {"200": {"description": "X report"}}}},
            "/v1/reports/z": {"post": {"summary": "Z report: daily closing, numbered, sealed and chained",
                                       "security": auth, "responses": {"201": {"description": "sealed Z report"}}}},
            "/v1/reports": {"get": {"summary": "Stored reports", "security": auth,
                                    "parameters": [{"name": "type", "in": "query", "schema": {"type": "string"}}],
                                    "responses": {"200": {"description": "reports"}}}},
            "/v1/reports/a": {"get": {"summary": "A report: article-level lines for a period", "security": auth,
                                      "parameters": [{"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                                                     {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}}],
                                      "responses": {"200": {"description": "A report"}, "400": _problem("bad period")}}},
            "/v1/reports/{id}": {"get": {"summary": "One stored report", "security": auth,
                                         "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                                         "responses": {"200": {"description": "report"}, "404": _problem("unknown id")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "text format"}}}},
            **_emcf_paths(auth),
        },
    }
