"""Shared builders for the receipts/reports/export tests."""
from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.config import load_config
from fiscal.protocol import GENESIS_HASH
from fiscal.seal import chain_hash
from agent.identity import OutletIdentity
from agent.service import AgentService
from tests.support import ROOT, python_path

GOLDEN = Path(__file__).parent / "golden"

EXAMPLE_ITEMS = [
    {"name": "EAU", "type": "BIE", "tax_group": "A", "unit_price": "720.00", "quantity": "5"},
    {"name": "LAIT GR", "type": "BIE", "tax_group": "B", "unit_price": "464.00", "quantity": "1"},
]


def example_request(request_id: str = "EX-345") -> dict[str, Any]:
    """The DGI example invoice (chapter 2) as a POS request."""
    return {"request_id": request_id, "type": "FV", "price_mode": "TTC", "invoice_number": "345/2024",
            "pos_terminal_id": "POS-01", "operator": {"id": "7", "name": "JACQUES"},
            "client": {"type": "PP", "nif": "A9001255A", "name": "ABC SARL"},
            "items": EXAMPLE_ITEMS, "payments": [{"method": "E", "amount": "4064.00"}]}


def example_identity() -> OutletIdentity:
    return OutletIdentity(
        outlet_id="KIN-001", outlet_name="SUPERMARCHÉ CENTRAL", merchant_nif="A9000011T",
        merchant_name="SUPERMARCHÉ CENTRAL", time_zone="Africa/Kinshasa", isf="AB01710090", agent_id="agent-1",
        issuer_public_key="", taxpayer={"rccm": "RCCM/2024/ 12/13/14", "address": "BOULEVARD 30 JUIN, KINSHASA",
                                        "phone": "012345678", "email": "info@test.cd"})


def device_example_invoice() -> dict[str, Any]:
    """The DGI example as the journal stores a device-sealed invoice (38h answer: MID, SIG, FC/TC FT, DT)."""
    inv = {
        "id": "5b1d6a9e-0000-4000-8000-000000000001", "request_id": "POS-01-000345", "status": "sealed",
        "mode": "device", "type": "FV", "price_mode": "TTC", "invoice_number": "345/2024",
        "merchant_nif": "A9000011T", "outlet_id": "KIN-001", "isf": "AB01710090", "pos_terminal_id": "POS-01",
        "operator": {"id": "7", "name": "JACQUES"},
        "client": {"type": "PP", "nif": "A9001255A", "name": "ABC SARL", "address": None, "phone": None,
                   "email": None, "rccm": None},
        "items": [dict(i, code=None, specific_tax=None, original_price=None, price_change=None) for i in EXAMPLE_ITEMS],
        "lines": [{"total": "3600.00", "ht": "3600.00", "vat": "0.00", "specific_tax": "0.00"},
                  {"total": "464.00", "ht": "400.00", "vat": "64.00", "specific_tax": "0.00"}],
        "comments": {}, "reference": None, "usd_rate": None,
        "totals": {"total": "4064.00", "vat": "64.00", "specific_tax": "0.00", "usd_equivalent": None,
                   "by_group": {"A": {"rate": "0.00", "total": "3600.00", "ht": "3600.00", "vat": "0.00"},
                                "B": {"rate": "16.00", "total": "464.00", "ht": "400.00", "vat": "64.00"}},
                   "payments": [{"method": "E", "amount": "4064.00"}], "paid": "4064.00", "change": "0.00"},
        "security": {"authority_id": "XX01710090-1", "code": "TESTFACTHQBAX2F3K22NMDYR",
                     "counters": {"type": 3, "total": 9, "label": "3/9 FV"}, "fiscal_number": 9,
                     "timestamp": "2024-12-04T12:34:56+01:00",
                     "qr_payload": "RDCDEF01;XX01710090-1;TESTFACTHQBAX2F3K22NMDYR;A9000011T;20241204123456",
                     "signature": None},
        "chain": {"prev_hash": GENESIS_HASH, "hash": ""},
    }
    inv["chain"]["hash"] = chain_hash(inv)
    return inv


def varied_request(i: int, **over: Any) -> dict[str, Any]:
    """A deterministic mix: FV/FT/EV, groups A/B/C/E, every payment method, some change."""
    kind = ("FV", "FV", "FT", "EV", "FV")[i % 5]
    if kind == "EV":
        items = [{"name": f"EXP {i}", "type": "BIE", "tax_group": "E", "unit_price": f"{1000 + i % 97}.00",
                  "quantity": "2"},
                 {"name": "EAU", "type": "BIE", "tax_group": "A", "unit_price": "720.00", "quantity": "1"}]
    else:
        items = [{"name": f"ART {i}", "code": f"SKU-{i % 13}", "type": "BIE", "tax_group": "B",
                  "unit_price": f"{100 + i % 50}.50", "quantity": str(1 + i % 3)},
                 {"name": "SERVICE", "type": "SER", "tax_group": "C", "unit_price": "250.00", "quantity": "1"},
                 {"name": "EAU", "type": "BIE", "tax_group": "A", "unit_price": "720.00", "quantity": "5"}]
    method = "EVCMDA"[i % 6]
    if method != "E":
        payments = [{"method": method}]  # the whole amount by transfer, card, mobile money...
    elif i % 12 == 0:
        payments = []  # no payment line: cash for the whole amount
    else:
        payments = [{"method": "E", "amount": "100000.00"}]  # cash with change
    body = {"request_id": f"R-{i:07d}", "type": kind, "price_mode": "TTC", "invoice_number": f"F/{i}",
            "pos_terminal_id": f"POS-{i % 3 + 1:02d}", "operator": {"id": "1", "name": "Jan"}, "items": items,
            "payments": payments}
    if i % 7 == 0:
        body["client"] = {"type": "PM", "nif": "A7654321Z", "name": "CLIENT SARL"}
    body.update(over)
    return body


def open_service(data_dir: Path) -> AgentService:
    return AgentService.open(load_config(data_dir))


def seal_in_process(data_dir: Path, payloads: list[dict]) -> list[dict]:
    """Seal with the agent's own Journal in this process (fast: group commit, no HTTP)."""
    service = open_service(data_dir)
    try:
        futures = [service.journal.submit(service.prepare(p)) for p in payloads]
        return [f.result(timeout=120).invoice for f in futures]
    finally:
        service.close()


def stalela(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=python_path()))
    if check and res.returncode != 0:
        raise AssertionError(f"stalela {' '.join(args)} failed: {res.stderr or res.stdout}")
    return res


def dsum(values) -> str:
    return str(sum((Decimal(v) for v in values), Decimal("0.00")).quantize(Decimal("0.01")))
