"""A sample invoice: the DGI's example sale (water in group A, milk in group B).

The quick start prints it as a ready-to-paste curl line, and the daemon seals it once (rolled
back, nothing kept) to warm up before it says READY.
"""
from __future__ import annotations

SAMPLE = {
    "type": "FV", "price_mode": "TTC", "invoice_number": "DEMO/1", "pos_terminal_id": "POS-01",
    "operator": {"id": "1123", "name": "Jan"},
    "items": [
        {"name": "EAU", "type": "BIE", "tax_group": "A", "unit_price": "720.00", "quantity": "5"},
        {"name": "LAIT GR", "type": "BIE", "tax_group": "B", "unit_price": "464.00"},
    ],
    "payments": [{"method": "E", "amount": "5000.00"}],
}
