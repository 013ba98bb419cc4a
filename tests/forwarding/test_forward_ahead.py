"""The forwarder's look-ahead (forwarder.py): phase 1 of an outlet's next invoice goes out while
the current one is confirmed. These tests break it on purpose: a SIGKILL while look-ahead
entries are `submitted`, a refusal of a look-ahead's phase 1, a point of sale allowing only two
pending requests, and a Retry-After received by one of two calls in flight."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import urllib.request

import aiohttp

from cloud_stub.config import DATABASE_URL_ENV
from cloud_stub.forwarder import DgiClient, Transient
from tests.forwarding.fwd_support import (EmcfSim, check_exactly_once_in_order, cloud_count, fill_ledger,
                                          set_tokens, start_cloud, wait_forwarded)


def _setup(tmp_path, procs, outlets: int, per_outlet: int, *sim_args: str):
    ledger = fill_ledger(tmp_path / "cloud", outlets, per_outlet)
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start(*sim_args)
    procs.append(sim)
    cloud = start_cloud(tmp_path / "cloud", sim)
    procs.append(cloud)
    set_tokens(tmp_path / "cloud", sim, ledger)
    return ledger, sim, cloud


def _wait(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cloud_values(data_dir, sql: str) -> set:
    """The first column of a query on the cloud's database (SQLite file or PostgreSQL schema)."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        import psycopg
        with psycopg.connect(url) as conn:
            return {r[0] for r in conn.execute(sql).fetchall()}
    conn = sqlite3.connect(data_dir / "cloud.sqlite3")
    try:
        return {r[0] for r in conn.execute(sql).fetchall()}
    finally:
        conn.close()


def _submitted(cloud, seq: int) -> int:
    return cloud_count(cloud.data_dir, f"SELECT COUNT(*) FROM dgi_submissions WHERE state = 'submitted' AND seq = {seq}")


def test_sigkill_while_look_ahead_entries_are_submitted_then_restart_normalizes_each_once(tmp_path, procs):
    ledger, sim, cloud = _setup(tmp_path, procs, 4, 25, "--fault", "confirm_delay_ms=10000")
    # Each outlet's first invoice is normalized at the DGI, its answer held (mid-confirm), and
    # its second one's phase 1 (the look-ahead) answered and its uid kept.
    _wait(lambda: sim.stats()["normalized"] >= 4 and _submitted(cloud, 2) == 4)
    cloud.kill()
    ahead_uids = _cloud_values(cloud.data_dir, "SELECT uid FROM dgi_submissions WHERE seq = 2")
    assert len(ahead_uids) == 4
    sim.fault("clear")
    cloud.start(30, "--workers", "0", "--dgi-url", sim.url, "--dgi-poll", "0.2", "--dgi-lease", "3s")
    wait_forwarded(cloud, 100)
    check_exactly_once_in_order(sim, ledger)
    stats = sim.stats()
    assert stats["normalized"] == 100 and stats["rn_normalized_twice"] == 0
    # The look-ahead requests kept before the kill were confirmed themselves (found pending by
    # the lookup), not replaced by new ones.
    assert ahead_uids <= {c["uid"] for c in sim.confirmed()}


def test_a_refused_look_ahead_is_not_quarantined_out_of_order(tmp_path, procs):
    ledger, sim, cloud = _setup(tmp_path, procs, 1, 6, "--fault", "confirm_delay_ms=600")
    # Once the first turn's two phase 1s are answered, every further phase 1 of this take-up
    # is a look-ahead's (the head's uid comes from its own look-ahead): refuse the next one.
    _wait(lambda: _submitted(cloud, 2) == 1)
    sim.fault("refuse=1")
    rows = wait_forwarded(cloud, 6, timeout=60)
    # Not recorded: when it became the head, the entry was sent again (the refusal was a
    # single shot) and normalized in its place, nothing quarantined out of order.
    assert rows[0]["counts"] == {"normalized": 6} and rows[0]["quarantined"] == []
    check_exactly_once_in_order(sim, ledger)
    log = (cloud.data_dir.parent / "cloud.log").read_text()
    assert '"dgi.quarantined"' not in log
    with urllib.request.urlopen(sim.url + "/_sim/faults", timeout=10) as resp:
        assert json.loads(resp.read())["shots"]["refuse"] == 0  # the refusal was given


def test_the_look_ahead_holds_at_most_two_pending_requests_per_point_of_sale(tmp_path, procs):
    ledger, sim, cloud = _setup(tmp_path, procs, 2, 15, "--max-pending", "2", "--latency-ms", "20")
    wait_forwarded(cloud, 30)
    check_exactly_once_in_order(sim, ledger)
    assert sim.stats()["since_start"].get("pending_limit", 0) == 0


def test_a_retry_after_received_by_one_call_holds_the_other_calls_of_the_point_of_sale(tmp_path, procs):
    sim = EmcfSim(tmp_path / "emcf.sqlite3").start("--fault", "r429=1", "--fault", "retry_after=1")
    procs.append(sim)
    token = sim.token("A1234567B", "ISF-001")

    async def scenario() -> list:
        async with aiohttp.ClientSession() as session:
            client = DgiClient(session, sim.url, token, rate=0, timeout=10)
            outcomes = []
            for _ in range(2):
                try:
                    await client.call("GET", "/api/invoice")
                    outcomes.append("answered")
                except Transient as exc:
                    outcomes.append(round(exc.delay or 0, 1))
            await asyncio.sleep(1.05)
            await client.call("GET", "/api/invoice")
            outcomes.append("answered")
            return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == 1.0 and 0 < outcomes[1] <= 1.0 and outcomes[2] == "answered"
    counts = sim.stats()["since_start"]
    # The second call never reached the DGI: one 429, none ignored.
    assert counts.get("answered_429", 0) == 1 and counts.get("retry_after_ignored", 0) == 0
