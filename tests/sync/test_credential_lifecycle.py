"""Credential lifecycle against the real cloud: renewal ahead of exhaustion, closures, revocation."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.support import EnrolledAgent, invoice


def test_three_blocks_back_to_back_without_a_refused_invoice(tmp_path, cloud):
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=200, check_interval=0.5)
    try:
        agent.start()
        statuses = []

        def client(c):
            for i in range(230):
                status, body, _ = agent.post("/v1/invoices", invoice(f"R{c}-{i}"))
                statuses.append((status, body["security"]["authority_id"] if status == 201 else body))
                time.sleep(0.005)  # a till, not a flood: renewal gets its turn

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(client, range(3)))
        refused = [s for s in statuses if s[0] != 201]
        assert not refused, refused[:3]
        authorities = {a for _, a in statuses}
        assert len(authorities) >= 3, authorities  # at least three credentials consumed
        numbers = agent.numbers()
        assert len(numbers) == 690 and len(set(numbers)) == 690
        assert agent.verify().returncode == 0, agent.verify().stderr
        counts = agent.wait_synced(60)
        assert counts == {"accepted": 690}, counts
        flags = cloud.get(f"/v1/outlets/{agent.outlet}/flags?open=1", agent.cloud_token)["flags"]
        assert flags == [], flags  # closed tails are void, not gaps
    finally:
        agent.stop()


def test_revoked_credential_is_dropped_at_once(tmp_path, cloud):
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=500, check_interval=0.3)
    try:
        agent.start()
        first = agent.post("/v1/invoices", invoice("V-1"))[1]["security"]["authority_id"]
        cloud.cli("credential", "revoke", first)
        deadline = time.monotonic() + 15
        authority = first
        i = 2
        while time.monotonic() < deadline and authority == first:
            status, body, _ = agent.post("/v1/invoices", invoice(f"V-{i}"))
            i += 1
            if status == 201:
                authority = body["security"]["authority_id"]
            time.sleep(0.2)
        assert authority != first, "the agent kept sealing with a revoked credential"
        conn = agent.db()
        state = conn.execute("SELECT state FROM credentials WHERE id = ?", (first,)).fetchone()[0]
        conn.close()
        assert state == "revoked"
        assert agent.verify().returncode == 0, agent.verify().stderr
    finally:
        agent.stop()
