"""Receipts against the DGI layout (protocol chapter 2): golden text files, mentions, print count."""
from __future__ import annotations

import os

import pytest

from agent.config import write_default_config
from agent.receipts import build_receipt, header_for, receipt_for, render_escpos, render_text
from tests.reports.helpers import GOLDEN, device_example_invoice, example_identity, example_request

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _golden(name: str, actual: str | bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(actual.encode() if isinstance(actual, str) else actual)
    expected = path.read_bytes()
    got = actual.encode() if isinstance(actual, str) else actual
    assert got == expected, f"{name} differs from the golden file:\n{got.decode(errors='replace')}"


def test_device_example_receipt_matches_the_dgi_layout():
    inv = device_example_invoice()
    text = render_text(receipt_for(inv, example_identity()), 42)
    _golden("device_example_42.txt", text)
    lines = text.splitlines()
    # The chapter-2 elements, in the example's order and with its figures.
    order = ["SUPERMARCHÉ CENTRAL", "NIF:", "RCCM:", "BOULEVARD 30 JUIN, KINSHASA", "TEL: 012345678",
             "Email: info@test.cd", "FACTURE DE VENTE", "No : 345/2024", "Vendeur:", "ISF:",
             "Type de l'acheteur :", "NIF de l'acheteur:", "Nom de l'acheteur:", "1 EAU (A-EX)(BIE)",
             "2 LAIT GR (B)(BIE)", "Total H.T.[B] 16%", "Total TVA [B] 16%", "Total EXONERES [A]", "Total TVA",
             "TOTAL TTC", "ESPECES:", "Nombre d'articles:", "CODE DEF/DGI", "TEST-FACT-HQBA-X2F3-K22N-MDYR",
             "DEF NIM:", "DEF Compteurs:", "DEF Heure:", "QR:"]
    pos = 0
    for needle in order:
        idx = next((i for i in range(pos, len(lines)) if needle in lines[i]), None)
        assert idx is not None, f"{needle!r} missing or out of order"
        pos = idx
    assert any(l.endswith("5 x 720            3.600") for l in lines)
    for label, value in (("Total H.T.[B] 16%", "400"), ("Total TVA [B] 16%", "64"), ("Total EXONERES [A]", "3.600"),
                         ("TOTAL TTC", "4.064"), ("ESPECES:", "4.064"), ("Nombre d'articles:", "2"),
                         ("DEF NIM:", "XX01710090-1"), ("DEF Compteurs:", "3/9 FV"),
                         ("DEF Heure:", "04/12/2024 12:34:56")):
        line = next(l for l in lines if l.startswith(label))
        assert line.endswith(" " + value) and len(line) == 42, line
    assert "DUPLICATA" not in text
    qr = "".join(lines[lines.index("QR:") + 1:])
    assert qr == inv["security"]["qr_payload"]


@pytest.mark.parametrize("width", [32, 42, 48])
def test_every_width_fits_and_keeps_the_qr_payload(width):
    inv = device_example_invoice()
    text = render_text(receipt_for(inv, example_identity(), duplicate=True), width)
    lines = text.splitlines()
    assert max(len(l) for l in lines) <= width
    assert "*** DUPLICATA ***" in text
    assert "".join(lines[lines.index("QR:") + 1:]) == inv["security"]["qr_payload"]


def test_device_invoice_takes_the_mcf_taxpayer_info_when_known():
    inv = device_example_invoice()
    header = header_for(example_identity(), inv, {"I0": "DEPOT MCF", "I3": "099"})
    text = render_text(build_receipt(inv, header), 42)
    assert "DEPOT MCF" in text and "TEL: 099" in text and "BOULEVARD 30 JUIN" in text


def test_escpos_bytes_of_the_example_are_exact():
    data = render_escpos(receipt_for(device_example_invoice(), example_identity()), 48)
    _golden("device_example_48.escpos", data)
    assert data.startswith(b"\x1b@")  # ESC @ initialize
    assert b"\x1dV" in data  # cut
    assert b"RDCDEF01;XX01710090-1;TESTFACTHQBAX2F3K22NMDYR;A9000011T;20241204123456" in data  # native QR data


def _template(text: str, inv: dict) -> str:
    """Replace what changes from run to run (code, time, numbers, QR) by placeholders."""
    from agent.receipts import fmt_time, group_code

    sec = inv["security"]
    lines = text.splitlines()
    qr_at = lines.index("QR:")
    assert "".join(lines[qr_at + 1:]) == sec["qr_payload"]
    text = "\n".join(lines[:qr_at + 1] + ["{QR_PAYLOAD}"]) + "\n"
    return (text.replace(group_code(sec["code"]), "{CODE}")
                .replace(fmt_time(sec["timestamp"], with_zone=True), "{HEURE}"))


def test_delegated_example_from_the_daemon(harness):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    status, inv, _ = harness.post("/v1/invoices", example_request())
    assert status == 201
    status, body, headers = harness.get(f"/v1/invoices/{inv['id']}/receipt.txt?width=42")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert headers["X-Receipt-Copy"] == "original" and headers["X-Receipt-Print"] == "1"
    text = body.decode()
    _golden("delegated_example_42.txt", _template(text, inv))
    assert "CODE STALELA" in text and "AUTORITÉ:" in text and "DC-KIN-001-1" in text
    assert "DUPLICATA" not in text
    # Every later print is a duplicate.
    status, body, headers = harness.get(f"/v1/invoices/{inv['id']}/receipt.txt?width=32")
    assert status == 200 and "*** DUPLICATA ***" in body.decode() and headers["X-Receipt-Print"] == "2"
    status, body, headers = harness.get(f"/v1/invoices/{inv['id']}/receipt.escpos")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert inv["security"]["qr_payload"].encode() in body
    # Bad width, unknown invoice: problems, not receipts.
    status, problem, headers = harness.get(f"/v1/invoices/{inv['id']}/receipt.txt?width=40")
    assert status == 400 and headers["Content-Type"].startswith("application/problem+json")
    assert harness.get("/v1/invoices/nope/receipt.txt")[0] == 404
    assert harness.get(f"/v1/invoices/{inv['id']}/receipt.pdf?format=letter")[0] == 400
    assert harness.get(f"/v1/invoices/{inv['id']}/receipt.txt", key=None)[0] == 401


def test_credit_note_and_export_mentions(harness):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    _, original, _ = harness.post("/v1/invoices", example_request("ORIG"))
    credit = example_request("AV-1") | {"type": "FA", "invoice_number": "AV/1", "items": [EXAMPLE_WATER],
                                        "reference": {"nature": "RAM", "code": original["security"]["code"]}}
    status, fa, _ = harness.post("/v1/invoices", credit)
    assert status == 201, fa
    text = harness.get(f"/v1/invoices/{fa['id']}/receipt.txt?width=48")[1].decode()
    assert "FACTURE D'AVOIR" in text and original["security"]["code"] in text and "RAM" in text
    export = example_request("EXP-1") | {"type": "EV", "items": [
        {"name": "CUIVRE", "type": "BIE", "tax_group": "E", "unit_price": "1000.00", "quantity": "3"}],
        "payments": [{"method": "V"}]}
    status, ev, _ = harness.post("/v1/invoices", export)
    assert status == 201, ev
    text = harness.get(f"/v1/invoices/{ev['id']}/receipt.txt?width=32")[1].decode()
    assert "EXPORTATION" in text and "VIREMENT:" in text and "Total H.T.[E] 0%" in text
    deposit = example_request("ACPT-1") | {"type": "FT", "payments": [{"method": "M", "amount": "1000.00"},
                                                                    {"method": "E", "amount": "5000.00"}]}
    status, ft, _ = harness.post("/v1/invoices", deposit)
    assert status == 201, ft
    text = harness.get(f"/v1/invoices/{ft['id']}/receipt.txt")[1].decode()
    assert "FACTURE D'ACOMPTE" in text and "MOBILE MONEY:" in text and "RENDU:" in text


EXAMPLE_WATER = {"name": "EAU", "type": "BIE", "tax_group": "A", "unit_price": "720.00", "quantity": "2"}


def test_queued_draft_has_no_receipt(harness):
    write_default_config(harness.data_dir, agent__port=harness.port, credential__check_interval=3600,
                         cloud__url="http://127.0.0.1:9", signer__policy=["delegated", "queued"])
    harness.start()
    status, draft, _ = harness.post("/v1/invoices", example_request())
    assert status == 202, draft
    drafts = harness.get("/v1/invoices?status=queued")[1]["items"]
    assert [d["id"] for d in drafts] == [draft["id"]]
    status, problem, _ = harness.get(f"/v1/invoices/{draft['id']}/receipt.txt")
    assert status == 409 and problem["title"] == "Not sealed"
    assert harness.get(f"/v1/invoices/{draft['id']}/receipt.pdf")[0] == 409


def test_specific_tax_price_change_and_usd_lines(harness):
    from tests.reports.helpers import open_service, seal_in_process

    harness.add_credential(harness.credential(1, 10))
    req = example_request("TS-1") | {
        "items": [{"name": "BIERE", "type": "BIE", "tax_group": "B", "unit_price": "1500.00", "quantity": "4",
                   "specific_tax": {"per_unit": "75.00"}},
                  {"name": "SAVON", "type": "BIE", "tax_group": "B", "unit_price": "500.00", "quantity": "2.5",
                   "original_price": "1000.00", "price_change": "réduction 50%"}],
        "payments": [], "usd_rate": {"rate": "2850.00", "date": "2026-01-02"},
        "client": {"type": "PM", "nif": "A1234567Z", "name": "ABC SARL", "address": "BOULEVARD 23",
                   "phone": "3488772", "email": "info@abcsarl.cd", "rccm": "RCCM20250124"}}
    [inv] = seal_in_process(harness.data_dir, [req])
    service = open_service(harness.data_dir)
    try:
        text = render_text(receipt_for(inv, service.identity), 42)
    finally:
        service.close()
    lines = text.splitlines()
    ts = next(l for l in lines if l.startswith("  T.S. 75/u"))
    assert ts.endswith(" 300")  # 4 x 75
    assert any(l.startswith("Total T.S.") for l in lines)
    assert "2,5 x 500" in text and "Prix initial 1.000 (réduction 50%)" in text
    assert "Équivalent USD" in text or inv["totals"]["usd_equivalent"] is None
    for needle in ("Type de l'acheteur :", "PM", "Adresse:", "BOULEVARD 23", "RCCM20250124", "info@abcsarl.cd"):
        assert needle in text
    assert max(len(l) for l in lines) <= 42
