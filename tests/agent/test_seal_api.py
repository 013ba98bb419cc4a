"""POST /v1/invoices end to end against the real daemon on 127.0.0.1."""
from __future__ import annotations

import pytest

from fiscal.canonical import reference_canonical_bytes, sha256_hex
from fiscal.seal import chain_view, verify_qr, verify_stalela_seal
from tests.support import invoice


@pytest.fixture
def agent(harness):
    harness.add_credential(harness.credential(1001, 1500))
    harness.start()
    return harness


def test_seal_returns_the_five_security_elements(agent):
    status, body, headers = agent.post("/v1/invoices", invoice("R-1"))
    assert status == 201, body
    sec = body["security"]
    assert body["status"] == "sealed" and body["mode"] == "delegated"
    assert sec["fiscal_number"] == 1001
    assert sec["authority_id"] == "DC-KIN-001-1"
    assert len(sec["code"]) == 24 and sec["code"].isalnum() and sec["code"].isupper()
    assert sec["timestamp"].endswith("+01:00")  # Africa/Kinshasa
    assert sec["counters"] == {"type": 1, "total": 1001, "label": "1/1001 FV"}
    assert body["merchant_nif"] == "A1234567B" and body["outlet_id"] == "KIN-001" and body["isf"] == "STL-KIN-001"
    assert body["chain"]["prev_hash"] == "0" * 64
    assert verify_stalela_seal(body, _agent_pub(agent)) == []
    # The journal's fast canonical path gives exactly the rfc8785 library's bytes.
    assert sha256_hex(reference_canonical_bytes(chain_view(body))) == body["chain"]["hash"]
    check = verify_qr(sec["qr_payload"], agent.issuer_pub)
    assert check.valid, check.reason
    assert check.fiscal_number == 1001


def test_numbers_and_chain_continue(agent):
    first = agent.post("/v1/invoices", invoice("R-1"))[1]
    second = agent.post("/v1/invoices", invoice("R-2"))[1]
    assert second["security"]["fiscal_number"] == 1002
    assert second["chain"]["prev_hash"] == first["chain"]["hash"]


def test_retry_same_request_id_returns_same_invoice(agent):
    s1, first, _ = agent.post("/v1/invoices", invoice("R-1"))
    s2, again, _ = agent.post("/v1/invoices", invoice("R-1"))
    assert (s1, s2) == (201, 201)
    assert again["id"] == first["id"]
    assert again["security"]["fiscal_number"] == first["security"]["fiscal_number"]
    assert agent.numbers() == [1001]


def test_same_request_id_different_body_is_409(agent):
    agent.post("/v1/invoices", invoice("R-1"))
    status, body, headers = agent.post("/v1/invoices", invoice("R-1", n_items=3))
    assert status == 409
    assert headers["Content-Type"].startswith("application/problem+json")
    assert agent.numbers() == [1001]


def test_get_list_and_qr(agent):
    ids = [agent.post("/v1/invoices", invoice(f"R-{i}"))[1]["id"] for i in range(3)]
    status, body, _ = agent.get(f"/v1/invoices/{ids[1]}")
    assert status == 200 and body["id"] == ids[1] and body["sync"]["state"] == "pending"
    status, page, _ = agent.get("/v1/invoices?limit=2")
    assert [i["id"] for i in page["items"]] == [ids[2], ids[1]]
    status, page2, _ = agent.get(f"/v1/invoices?limit=2&cursor={page['next_cursor']}")
    assert [i["id"] for i in page2["items"]] == [ids[0]] and page2["next_cursor"] is None
    status, png, headers = agent.get(f"/v1/invoices/{ids[0]}/qr.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    status, svg, headers = agent.get(f"/v1/invoices/{ids[0]}/qr.svg")
    assert status == 200 and b"<svg" in svg
    assert agent.get("/v1/invoices/nope")[0] == 404


def test_health_and_openapi_need_no_key(agent):
    status, health, _ = agent.get("/v1/health", key=None)
    assert status == 200 and health["status"] == "ok" and health["mode"] == "delegated"
    assert health["credential"]["remaining_numbers"] == 500
    assert "signature" not in str(health) and agent.api_key not in str(health)
    status, doc, _ = agent.get("/v1/openapi.json", key=None)
    assert status == 200 and "InvoiceRequest" in doc["components"]["schemas"]
    assert "/v1/invoices" in doc["paths"]


def test_metrics(agent):
    agent.post("/v1/invoices", invoice("R-1"))
    status, text, _ = agent.get("/metrics", key=None)
    assert status == 200
    assert b'stalela_invoices_sealed_total{mode="delegated"} 1.0' in text


def _agent_pub(agent):
    from fiscal.signing import public_key_text
    return public_key_text(agent.agent_key)


def test_revoked_key_stops_working_without_a_restart(agent):
    # The API remembers valid keys for at most a second (agent/api/keys.py KeyRing).
    import time as _time
    from agent.api.keys import revoke_key
    assert agent.post("/v1/invoices", invoice("KR-1"))[0] == 201
    conn = agent.db()
    assert revoke_key(conn, "POS-01")  # what `stalela agent keys revoke POS-01` does
    conn.close()
    deadline = _time.monotonic() + 5
    n = 0
    while True:
        n += 1
        status, body, headers = agent.post("/v1/invoices", invoice(f"KR-{n + 1}"))
        if status == 401 or _time.monotonic() > deadline:
            break
        _time.sleep(0.2)
    assert status == 401, body
    assert headers["Content-Type"].startswith("application/problem+json")


def test_retry_answers_with_the_current_sync_state(agent):
    status, first, _ = agent.post("/v1/invoices", invoice("R-SYNC"))
    assert status == 201 and first["sync"]["state"] == "pending"
    conn = agent.db()
    conn.execute("UPDATE invoices SET sync_state = 'accepted' WHERE request_id = 'R-SYNC'")
    conn.close()
    status, again, _ = agent.post("/v1/invoices", invoice("R-SYNC"))
    assert status == 201 and again["id"] == first["id"]
    assert again["sync"]["state"] == "accepted"
