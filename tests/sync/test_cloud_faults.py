"""Cloud faults between agent and cloud, through a real fault-injecting TCP proxy on loopback.

Each test asserts that nothing is lost and nothing is duplicated in the cloud ledger.
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from fiscal.seal import verify_qr
from tests.faultproxy import FaultProxy
from tests.support import EnrolledAgent, invoice


@pytest.fixture
def proxy(cloud):
    p = FaultProxy(cloud.port)
    yield p
    p.close()


def _agent(tmp_path, cloud, proxy, **kw):
    return EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=1000, cloud_url=proxy.url, **kw)


def _seal_n(agent, n, prefix):
    for i in range(n):
        status, body, _ = agent.post("/v1/invoices", invoice(f"{prefix}-{i}"))
        assert status == 201, body


def _ledger_count(cloud, agent):
    return cloud.get(f"/v1/outlets/{agent.outlet}/summary", agent.cloud_token)["count"]


@pytest.mark.parametrize("mode", ["refuse", "blackhole", "error500", "reset"])
def test_sync_survives_cloud_fault(tmp_path, cloud, proxy, mode):
    agent = _agent(tmp_path, cloud, proxy)
    try:
        proxy.mode = mode
        agent.start()
        _seal_n(agent, 40, mode)
        time.sleep(2.5)  # the worker tries (and fails) at least once
        counts = agent.sync_state_counts()
        assert counts == {"pending": 40}, counts
        assert _ledger_count(cloud, agent) == 0
        sync = agent.get("/v1/sync")[1]
        assert sync["pending"] == 40 and (sync["last_error"] or mode == "blackhole")
        proxy.mode = "pass"
        counts = agent.wait_synced(90)
        assert set(counts) <= {"accepted", "duplicate"} and sum(counts.values()) == 40
        assert _ledger_count(cloud, agent) == 40
        assert cloud.get(f"/v1/outlets/{agent.outlet}/ledger/verify", agent.cloud_token)["valid"] is True
    finally:
        agent.stop()


def test_same_batch_twice_is_not_duplicated(tmp_path, cloud, proxy):
    agent = _agent(tmp_path, cloud, proxy)
    try:
        proxy.mode = "twice"
        agent.start()
        _seal_n(agent, 30, "twice")
        counts = agent.wait_synced(60)
        assert sum(counts.values()) == 30
        assert _ledger_count(cloud, agent) == 30
    finally:
        agent.stop()


def test_cloud_signer_then_fallback_then_back(tmp_path, cloud, proxy):
    agent = _agent(tmp_path, cloud, proxy, policy=("cloud", "delegated"), breaker_seconds=3)
    try:
        agent.start()
        status, body, _ = agent.post("/v1/invoices", invoice("C-1"))
        assert status == 201 and body["mode"] == "cloud", body
        assert body["security"]["authority_id"] == f"CLOUD-{agent.outlet}"
        assert verify_qr(body["security"]["qr_payload"], agent.issuer_pub).valid
        # Cloud unreachable: the next signer seals at once, and the breaker keeps it that way.
        proxy.down()
        status, body, _ = agent.post("/v1/invoices", invoice("C-2"))
        assert status == 201 and body["mode"] == "delegated", body
        health = agent.get("/v1/health", key=None)[1]
        assert health["mode"] == "delegated" and health["signers"]["cloud"].startswith("unavailable")
        # Cloud back: the probe closes the breaker and online sealing resumes.
        proxy.up()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and agent.get("/v1/health", key=None)[1]["mode"] != "cloud":
            time.sleep(0.2)
        status, body, _ = agent.post("/v1/invoices", invoice("C-3"))
        assert status == 201 and body["mode"] == "cloud", body
        assert agent.verify().returncode == 0, agent.verify().stderr
    finally:
        agent.stop()


def test_lost_cloud_answer_never_seals_twice(tmp_path, cloud, proxy):
    agent = _agent(tmp_path, cloud, proxy, policy=("cloud", "delegated"), breaker_seconds=3)
    try:
        agent.start()
        proxy.mode = "blackhole"  # the request leaves, no answer ever comes (the cloud never sees it)
        # Past the deadline and the clock margin the cloud can no longer seal this attempt: the
        # sale is sealed by the next signer, not left stuck.
        status, body, _ = agent.post("/v1/invoices", invoice("L-1"))
        assert status == 201 and body["mode"] == "delegated", body
        # A retry of that sale gets that very invoice back...
        again = agent.post("/v1/invoices", invoice("L-1"))[1]
        assert again["id"] == body["id"]
        # ...while other sales go on with the delegated credential.
        status, other, _ = agent.post("/v1/invoices", invoice("L-2"))
        assert status == 201 and other["mode"] == "delegated"
        proxy.mode = "pass"
        # Once the cloud answers, the agent tells it the attempt was superseded: it had sealed
        # nothing, so the intent is settled and no double seal is flagged.
        _wait_no_intent(agent)
        agent.wait_synced(60)
        ledger = cloud.get(f"/v1/outlets/{agent.outlet}/ledger?limit=1000", agent.cloud_token)
        rids = [e["invoice"]["request_id"] for e in ledger["entries"]]
        assert rids.count("L-1") == 1
        flags = cloud.get(f"/v1/outlets/{agent.outlet}/flags", agent.cloud_token)["flags"]
        assert not [f for f in flags if f["reason"] == "double_seal"]
    finally:
        agent.stop()


def _wait_no_intent(agent, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = agent.db()
        left = conn.execute("SELECT COUNT(*) FROM cloud_intents").fetchone()[0]
        conn.close()
        if left == 0:
            return
        time.sleep(0.3)
    raise AssertionError("the superseded cloud intent was never settled")


def test_a_frozen_cloud_never_keeps_a_sale_and_never_seals_it_late(tmp_path, cloud):
    # The cloud process stops (SIGSTOP) with the request in its socket: the sale is sealed by the
    # next signer after the deadline; when the cloud resumes, it reads the request after its
    # deadline and refuses to commit it. One sale, one number.
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=1000,
                          policy=("cloud", "delegated"), breaker_seconds=3)
    try:
        agent.start()
        assert agent.post("/v1/invoices", invoice("F-0"))[1]["mode"] == "cloud"  # the link works
        os.kill(cloud.proc.pid, signal.SIGSTOP)
        try:
            status, body, _ = agent.post("/v1/invoices", invoice("F-1"))
        finally:
            os.kill(cloud.proc.pid, signal.SIGCONT)
        assert status == 201 and body["mode"] == "delegated", body
        _wait_no_intent(agent)
        agent.wait_synced(60)
        ledger = cloud.get(f"/v1/outlets/{agent.outlet}/ledger?limit=1000", agent.cloud_token)
        sealed = [(e["mode"], e["invoice"]["request_id"]) for e in ledger["entries"]]
        assert sealed.count(("delegated", "F-1")) == 1 and ("cloud", "F-1") not in sealed
        flags = cloud.get(f"/v1/outlets/{agent.outlet}/flags", agent.cloud_token)["flags"]
        assert not [f for f in flags if f["reason"] == "double_seal"]
    finally:
        agent.stop()


def test_an_answer_lost_after_the_cloud_sealed_is_flagged_for_audit(tmp_path, cloud, proxy):
    # The one case the deadline cannot prevent: the cloud sealed before its deadline and its
    # answer was lost. The sale was sealed again by the next signer; once the cloud answers, the
    # agent reports the replacement and the cloud flags the outlet `double_seal`, naming both.
    agent = _agent(tmp_path, cloud, proxy, policy=("cloud", "delegated"), breaker_seconds=3)
    try:
        agent.start()
        proxy.mode = "lose"
        status, body, _ = agent.post("/v1/invoices", invoice("D-1"))
        assert status == 201 and body["mode"] == "delegated", body
        proxy.mode = "pass"
        _wait_no_intent(agent)
        flags = cloud.get(f"/v1/outlets/{agent.outlet}/flags", agent.cloud_token)["flags"]
        double = [f for f in flags if f["reason"] == "double_seal"]
        assert len(double) == 1 and "D-1" in double[0]["detail"], flags
        assert str(body["security"]["fiscal_number"]) in double[0]["detail"]
        assert "signer.double_seal" in agent.read_log()
    finally:
        agent.stop()


def test_cloud_409_is_the_pos_answer_and_keeps_the_cloud_signer(tmp_path, cloud, proxy):
    # A request_id the cloud already sealed with another body: the POS gets the 409, and the next
    # sale still goes to the cloud (a 409 is not a signer failure: no breaker, no fallback).
    agent = _agent(tmp_path, cloud, proxy, policy=("cloud", "delegated"), breaker_seconds=30)
    try:
        agent.start()
        first = invoice("R409")
        req = urllib.request.Request(cloud.url + "/v1/seal", method="POST",
                                     data=json.dumps({"invoice": first, "isf": "ISF-1"}).encode(),
                                     headers={"Authorization": f"Bearer {agent.cloud_token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # sealed by the cloud, unknown to the agent
            assert resp.status == 201
        other = invoice("R409", n_items=3)  # same request_id, another body
        status, body, _ = agent.post("/v1/invoices", other)
        assert status == 409 and body["type"] == "/problems/request-id-reused", body
        health = agent.get("/v1/health", key=None)[1]
        assert health["signers"]["cloud"] == "available" and health["mode"] == "cloud", health
        status, body, _ = agent.post("/v1/invoices", invoice("AFTER-409"))
        assert status == 201 and body["mode"] == "cloud", body
        # Nothing was sealed for the refused request, by any signer.
        conn = agent.db()
        assert conn.execute("SELECT COUNT(*) FROM invoices WHERE request_id = 'R409'").fetchone()[0] == 0
        conn.close()
    finally:
        agent.stop()


def test_a_late_cloud_refuses_after_the_deadline_and_the_sale_falls_back_at_once(tmp_path, cloud, proxy):
    # The link holds the request past its deadline (1 s): the cloud sees it late, refuses to commit
    # it (422 deadline_passed), and the agent seals the sale with the next signer right away —
    # no 503, no stuck sale, and the cloud's ledger holds nothing for it.
    agent = _agent(tmp_path, cloud, proxy, policy=("cloud", "delegated"), breaker_seconds=30)
    try:
        agent.start()
        proxy.mode, proxy.late_seconds = "late", 1.3
        status, body, _ = agent.post("/v1/invoices", invoice("LATE-1"))
        assert status == 201 and body["mode"] == "delegated", body
        proxy.mode = "pass"
        health = agent.get("/v1/health", key=None)[1]
        assert health["signers"]["cloud"].startswith("unavailable"), health  # the slow link is skipped
        entries = cloud.get(f"/v1/outlets/{agent.outlet}/ledger", agent.cloud_token)["entries"]
        assert [e for e in entries if e["mode"] == "cloud"] == []  # the late request was never sealed
        conn = agent.db()
        assert conn.execute("SELECT COUNT(*) FROM cloud_intents").fetchone()[0] == 0
        conn.close()
    finally:
        agent.stop()
