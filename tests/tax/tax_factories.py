"""Builders for invoice requests in the tax tests."""
from __future__ import annotations

from datetime import date
from typing import Any

from fiscal.models import InvoiceRequest

D2024 = date(2024, 12, 4)  # the DGI example invoice
D2025 = date(2025, 3, 1)  # the protocol's C1h / 38h examples
D2026 = date(2026, 3, 1)


def item(group: str, price: str, qty: str = "1", type: str = "BIE", name: str = "ART", **extra: Any) -> dict:
    return {"name": name, "type": type, "tax_group": group, "unit_price": price, "quantity": qty, **extra}


def req(items: list[dict], **fields: Any) -> InvoiceRequest:
    body: dict[str, Any] = {
        "request_id": "POS-01-000001", "type": "FV", "invoice_number": "FAC01/2026",
        "pos_terminal_id": "POS-01", "operator": {"id": "1123", "name": "Jan"}, "items": items,
    }
    body.update(fields)
    return InvoiceRequest.model_validate(body)
