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
    # GET /v1/invoices/{id} adds the DGI's answer through the cloud (agent/dgi.py).
    from ..dgi import DGI_SCHEMA
    sealed_schema = dict(components["SealedInvoice"])
    sealed_schema["properties"] = {**sealed_schema["properties"], "dgi": DGI_SCHEMA}
    components["SealedInvoice"] = sealed_schema
    sealed = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/SealedInvoice"}}}}
    auth = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stalela Edge agent — POS API", "version": "1"},
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
        },
    }
