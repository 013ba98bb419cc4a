"""Policy `queued`: drafts are stored durably (202), never shown as sealed, sealed when a signer returns."""
from __future__ import annotations

import time

from agent.config import write_default_config
from tests.support import invoice


def test_draft_then_sealed_when_a_credential_arrives(harness):
    text = (harness.data_dir / "config.toml").read_text()
    text = text.replace('policy = ["delegated"]', 'policy = ["delegated", "queued"]')
    text = text.replace("interval = 5.0", "interval = 0.3")
    (harness.data_dir / "config.toml").write_text(text)
    harness.start()
    status, draft, _ = harness.post("/v1/invoices", invoice("Q-1"))
    assert status == 202 and draft["status"] == "queued"
    assert "security" not in draft  # a draft has no security elements and is never a receipt
    assert harness.get("/v1/health", key=None)[1]["mode"] == "queued"
    status, again, _ = harness.post("/v1/invoices", invoice("Q-1"))
    assert status == 202 and again["id"] == draft["id"]
    assert harness.numbers() == []
    harness.add_credential(harness.credential(1, 10))
    deadline = time.monotonic() + 15
    body = None
    while time.monotonic() < deadline:
        status, body, _ = harness.get("/v1/invoices?status=sealed")
        if body["items"]:
            break
        time.sleep(0.2)
    assert body["items"] and body["items"][0]["request_id"] == "Q-1"
    assert body["items"][0]["security"]["fiscal_number"] == 1
    status, retry, _ = harness.post("/v1/invoices", invoice("Q-1"))
    assert status == 201 and retry["security"]["fiscal_number"] == 1
    assert harness.numbers() == [1]
    assert harness.verify().returncode == 0
