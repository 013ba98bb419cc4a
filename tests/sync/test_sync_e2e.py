"""Offline-first sync with the real cloud and real agent processes."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from tests.support import ROOT, EnrolledAgent, invoice


@pytest.fixture
def agent(tmp_path, cloud):
    a = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=2000)
    yield a
    a.stop()


def _seal(agent, clients, per_client, prefix):
    def client(c):
        out = []
        for i in range(per_client):
            status, body, _ = agent.post("/v1/invoices", invoice(f"{prefix}{c}-{i}", n_items=2 + i % 3))
            assert status == 201, body
            out.append(body)
        return out
    with ThreadPoolExecutor(clients) as pool:
        return [b for part in pool.map(client, range(clients)) for b in part]


def _group_totals(bodies):
    totals: dict[str, Decimal] = {}
    for b in bodies:
        for g, t in b["totals"]["by_group"].items():
            totals[g] = totals.get(g, Decimal(0)) + Decimal(t["total"])
    return totals


@pytest.mark.parametrize("per_client", [150, pytest.param(1667, marks=pytest.mark.slow)])
def test_outage_then_reconcile_everything(tmp_path, cloud, per_client):
    # 3 POS clients seal through a whole cloud outage (the slow variant: 5,001 invoices).
    total = 3 * per_client
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=total + 500)
    try:
        _outage_then_reconcile(agent, cloud, per_client, total)
    finally:
        agent.stop()


def _outage_then_reconcile(agent, cloud, per_client, total):
    cloud.stop()  # down before the agent even starts, and for the whole sealing run
    agent.start()
    bodies = _seal(agent, 3, per_client, "O")
    assert agent.sync_state_counts() == {"pending": total}
    health = agent.get("/v1/health", key=None)[1]
    assert health["status"] in ("ok", "degraded") and health["sync"]["pending"] == total
    assert health["state"] == "amber"
    cloud.start()
    counts = agent.wait_synced(120 + total / 50)
    assert counts == {"accepted": total}
    summary = cloud.get(f"/v1/outlets/{agent.outlet}/summary", agent.cloud_token)
    assert summary["count"] == total
    cloud_totals = {g: Decimal(v["total"]) for g, v in summary["by_type"]["FV"]["by_group"].items()}
    assert cloud_totals == _group_totals(bodies)
    assert cloud.get(f"/v1/outlets/{agent.outlet}/ledger/verify", agent.cloud_token)["valid"] is True
    assert agent.verify().returncode == 0


def test_sigkill_agent_and_cloud_during_backlog_upload(agent, cloud):
    agent.start()
    cloud.stop()
    _seal(agent, 3, 200, "K")
    cloud.start()
    time.sleep(0.8)      # the upload is under way
    agent.kill()
    cloud.kill()
    cloud.start()
    agent.start()
    counts = agent.wait_synced(120)
    assert counts == {"accepted": 600} or set(counts) <= {"accepted", "duplicate"}
    assert sum(counts.values()) == 600
    summary = cloud.get(f"/v1/outlets/{agent.outlet}/summary", agent.cloud_token)
    assert summary["count"] == 600  # nothing lost, nothing twice in the ledger
    assert cloud.get(f"/v1/outlets/{agent.outlet}/ledger/verify", agent.cloud_token)["valid"] is True


def test_deleted_invoice_is_a_gap_flagged_by_the_cloud(agent, cloud):
    agent.start()
    cloud.stop()
    bodies = _seal(agent, 1, 6, "G")
    agent.stop()
    conn = sqlite3.connect(agent.data_dir / "agent.db")
    conn.execute("DELETE FROM invoices WHERE id = ?", (bodies[2]["id"],))
    conn.commit()
    conn.close()
    cloud.start()
    agent.start()
    time.sleep(3)
    flags = cloud.get(f"/v1/outlets/{agent.outlet}/flags", agent.cloud_token)["flags"]
    status = agent.get("/v1/sync")[1]
    # The invoice after the hole cannot link to the chain: quarantined with the cloud's reason.
    assert status["quarantined"] >= 1 and "chain" in status["quarantine"][0]["reason"]
    assert any(f.get("reason") == "gap" or "gap" in str(f) for f in flags), flags


@pytest.mark.clock_edges
def test_sync_cli(agent, cloud):
    agent.start()
    cloud.stop()
    _seal(agent, 1, 5, "S")
    agent.stop()
    cloud.start()
    run = lambda *a: subprocess.run([sys.executable, "-m", "agent", "sync", *a, "--data", str(agent.data_dir)],
                                    capture_output=True, text=True, cwd=ROOT)
    out = run("status")
    assert out.returncode == 0 and "pending: 5" in out.stdout
    out = run("now")
    assert out.returncode == 0, out.stderr
    assert "uploaded 5" in out.stdout
    assert "pending: 0" in run("status").stdout
