"""The benchmark invoice: 10 items across groups, the shape a supermarket till sends."""
from __future__ import annotations

import json


def ten_item_invoice(request_id: str) -> dict:
    groups = "ABBBCBAOBB"
    items = [{"name": f"ARTICLE {i:02d} 500G", "code": f"SKU-{i:05d}", "type": "BIE", "tax_group": g,
              "unit_price": f"{450 + 37 * i}.00", "quantity": str(1 + i % 3)} for i, g in enumerate(groups)]
    return {"request_id": request_id, "type": "FV", "price_mode": "TTC", "invoice_number": f"T/{request_id}",
            "pos_terminal_id": "POS-01", "operator": {"id": "1123", "name": "Jan"},
            "client": {"type": "PM", "nif": "A9001255A", "name": "ABC SARL"},
            "items": items, "payments": [{"method": "M", "amount": "5000.00"}]}


def sample_sealed_dict() -> dict:
    """A realistic sealed-invoice dict for canonicalization timing."""
    inv = ten_item_invoice("BENCH-1")
    inv.update({"id": "0" * 36, "status": "sealed", "mode": "delegated", "merchant_nif": "A1234567B",
                "outlet_id": "KIN-001", "isf": "STL-KIN-001", "comments": {}, "reference": None, "usd_rate": None,
                "lines": [{"total": "1000.00", "ht": "862.07", "vat": "137.93", "specific_tax": "0.00"}] * 10,
                "totals": {"total": "10000.00", "vat": "1000.00", "specific_tax": "0.00", "usd_equivalent": None,
                           "by_group": {"B": {"rate": "16.00", "total": "1", "ht": "1", "vat": "0"}},
                           "payments": [{"method": "M", "amount": "5000.00"}], "paid": "1", "change": "0"},
                "security": {"authority_id": "DC-KIN-001-1", "counters": {"type": 1, "total": 1, "label": "1/1 FV"},
                             "fiscal_number": 1, "timestamp": "2026-03-01T12:00:00+01:00"},
                "chain": {"prev_hash": "0" * 64}})
    return json.loads(json.dumps(inv))
