"""The one invoice builder: a request, its computed lines and totals, and a signer's security
elements become the sealed invoice document. Every signer uses it (the delegated and device paths
in the agent's journal, the cloud's online signer), so the three can never drift apart.

The builder lays out the document and leaves `security.code`, `qr_payload`, `signature` and
`chain.hash` for the signer to fill: a Stalela signer signs it (fiscal.seal.apply_signature), a
device-sealed one carries the MCF's elements exactly as returned and only its chain hash is added.
"""
from __future__ import annotations

from typing import Any


def counters(type_count: int, total: int, invoice_type: str) -> dict[str, Any]:
    """The counters printed on a receipt: per invoice type and overall, like the MCF's FC/TC FT."""
    return {"type": type_count, "total": total, "label": f"{type_count}/{total} {invoice_type}"}


def security(*, authority_id: str, fiscal_number: int, counters: dict[str, Any], timestamp: str,
             code: str = "", qr_payload: str = "") -> dict[str, Any]:
    return {"authority_id": authority_id, "code": code, "counters": counters, "fiscal_number": fiscal_number,
            "timestamp": timestamp, "qr_payload": qr_payload, "signature": None}


def sealed_invoice(request: dict[str, Any], *, invoice_id: str, mode: str, merchant_nif: str, outlet_id: str,
                   isf: str, lines: list[dict[str, Any]], totals: dict[str, Any], security: dict[str, Any],
                   prev_hash: str) -> dict[str, Any]:
    """The sealed document for `request` (the InvoiceRequest in JSON form).

    The payments are not copied: the tax engine settles them into `totals`. The key order is the
    stored and answered order; hashes and signatures use canonical (sorted) bytes.
    """
    return {
        "id": invoice_id,
        "request_id": request["request_id"],
        "status": "sealed",
        "mode": mode,
        "type": request["type"],
        "price_mode": request["price_mode"],
        "invoice_number": request["invoice_number"],
        "merchant_nif": merchant_nif,
        "outlet_id": outlet_id,
        "isf": isf,
        "pos_terminal_id": request["pos_terminal_id"],
        "operator": request["operator"],
        "client": request["client"],
        "items": request["items"],
        "lines": lines,
        "comments": request["comments"],
        "reference": request["reference"],
        "usd_rate": request["usd_rate"],
        "totals": totals,
        "security": security,
        "chain": {"prev_hash": prev_hash, "hash": ""},
    }
