"""The fiscal invariants under load, crashes, exhaustion and expiry — real processes, real files."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from tests.support import invoice

START = 5001


def _hammer(agent, clients: int, per_client: int, prefix: str = "C", *, progress=None):
    """Each client seals its invoices one after another; returns {request_id: (status, number)}.

    `progress(n)`, when given, is called with the number of answers so far after each answer
    (a test uses it to strike at a point of the run rather than at a moment in time)."""
    results: dict[str, tuple[int, int | None]] = {}
    lock = threading.Lock()

    def client(c: int):
        for i in range(per_client):
            rid = f"{prefix}{c}-{i}"
            try:
                status, body, _ = agent.post("/v1/invoices", invoice(rid, n_items=3))
            except OSError:
                return  # the agent was killed under us
            with lock:
                results[rid] = (status, body["security"]["fiscal_number"] if status == 201 else None)
                answered = len(results)
            if progress is not None:
                progress(answered)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return results


def test_eight_clients_2000_invoices_no_gap_no_repeat(harness):
    harness.add_credential(harness.credential(START, START + 1999))
    harness.start()
    results = _hammer(harness, 8, 250)
    assert len(results) == 2000
    assert all(status == 201 for status, _ in results.values())
    numbers = sorted(n for _, n in results.values())
    assert numbers == list(range(START, START + 2000))
    assert harness.numbers() == numbers
    res = harness.verify()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2000 invoices verified" in res.stdout


def test_sigkill_under_load_loses_nothing(harness):
    harness.add_credential(harness.credential(START, START + 4999))
    harness.start()
    seen: dict[str, tuple[int, int | None]] = {}

    def load():
        seen.update(_hammer(harness, 8, 200, prefix="K"))

    t = threading.Thread(target=load)
    t.start()
    time.sleep(1.0)
    harness.kill()  # SIGKILL mid-load
    t.join()
    sealed_seen = {rid: n for rid, (s, n) in seen.items() if s == 201}
    assert sealed_seen, "the load should have sealed some invoices before the kill"

    harness.start()
    stored = harness.numbers()
    # Every invoice a client saw as sealed is stored, with the number it was told.
    conn = harness.db()
    rows = dict(conn.execute("SELECT request_id, fiscal_number FROM invoices").fetchall())
    conn.close()
    for rid, n in sealed_seen.items():
        assert rows.get(rid) == n
    # No gap, no repeat, even across the crash.
    assert stored == list(range(START, START + len(stored)))
    # Retrying every request (as a POS would after a timeout) returns the same numbers; the ones that
    # never got an answer are sealed now, continuing the sequence.
    for rid, n in sealed_seen.items():
        status, body, _ = harness.post("/v1/invoices", invoice(rid, n_items=3))
        assert status == 201 and body["security"]["fiscal_number"] == n
    unanswered = [f"K{c}-{i}" for c in range(8) for i in range(200) if f"K{c}-{i}" not in sealed_seen][:50]
    for rid in unanswered:
        assert harness.post("/v1/invoices", invoice(rid, n_items=3))[0] == 201
    final = harness.numbers()
    assert final == list(range(START, START + len(final)))
    res = harness.verify()
    assert res.returncode == 0, res.stdout + res.stderr


def test_block_exhaustion_blocks_then_renewal_resumes(harness):
    harness.add_credential(harness.credential(1, 3))
    harness.start()
    for i in range(3):
        assert harness.post("/v1/invoices", invoice(f"E{i}"))[0] == 201
    status, body, headers = harness.post("/v1/invoices", invoice("E3"))
    assert status == 503 and headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == "/problems/sealing-blocked" and body["reason"] == "exhausted"
    health = harness.get("/v1/health", key=None)[1]
    assert health["status"] == "blocked" and health["mode"] is None
    # A renewed credential (the next block of the outlet's counter) resumes sealing.
    harness.add_credential(harness.credential(501, 1000))
    status, body, _ = harness.post("/v1/invoices", invoice("E3"))
    assert status == 201 and body["security"]["fiscal_number"] == 501
    assert body["security"]["authority_id"] == "DC-KIN-001-2"
    assert harness.get("/v1/health", key=None)[1]["status"] == "ok"
    res = harness.verify()
    assert res.returncode == 0, res.stdout + res.stderr


def test_expired_credential_blocks(harness):
    # The credential is handed over once the agent runs, so a slow start cannot eat its last
    # seconds (it is valid from a minute ago for a minute and 4 s), and the test waits for the
    # moment it expires rather than for a fixed time.
    harness.start()
    cred = harness.credential(1, 100, valid_for=timedelta(minutes=1, seconds=4))
    harness.add_credential(cred)
    assert harness.post("/v1/invoices", invoice("X1"))[0] == 201
    time.sleep(max(0.0, (cred.not_after - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    status, body, _ = harness.post("/v1/invoices", invoice("X2"))
    assert status == 503 and body["reason"] == "expired", body
    assert harness.get("/v1/health", key=None)[1]["status"] == "blocked"
    harness.add_credential(harness.credential(101, 200))
    status, body, _ = harness.post("/v1/invoices", invoice("X2"))
    assert status == 201 and body["security"]["fiscal_number"] == 101
    # The expired credential was closed at its last used number: its tail is void, not a gap.
    conn = harness.db()
    closure = json.loads(conn.execute("SELECT closure FROM credentials WHERE id='DC-KIN-001-1'").fetchone()[0])
    conn.close()
    assert closure["last_used"] == 1
    assert harness.verify().returncode == 0


def _seal_some(harness, n=5):
    harness.add_credential(harness.credential(1, 100))
    harness.start()
    bodies = [harness.post("/v1/invoices", invoice(f"T{i}"))[1] for i in range(n)]
    harness.stop()
    return bodies


def test_tampered_invoice_is_named_by_verify(harness):
    from agent.store.bodies import pack, unpack
    bodies = _seal_some(harness)
    victim = bodies[2]
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    raw = unpack(conn.execute("SELECT body FROM invoices WHERE id = ?", (victim["id"],)).fetchone()[0])
    # Edit one byte of a stored amount (someone who knows the storage format: unpack, edit, pack).
    tampered = raw.replace('"unit_price":"101.50"', '"unit_price":"101.60"', 1)
    assert tampered != raw
    conn.execute("UPDATE invoices SET body = ? WHERE id = ?", (pack(tampered), victim["id"]))
    conn.commit()
    conn.close()
    res = harness.verify()
    assert res.returncode == 1
    assert victim["id"] in res.stderr and "fiscal number 3" in res.stderr
    assert "does not match its chain hash" in res.stderr


def test_a_damaged_stored_body_is_named_by_verify(harness):
    bodies = _seal_some(harness)
    victim = bodies[1]
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    raw = bytearray(conn.execute("SELECT body FROM invoices WHERE id = ?", (victim["id"],)).fetchone()[0])
    raw[len(raw) // 2] ^= 0x5A  # one byte of the compressed body, as a bad disk sector would
    conn.execute("UPDATE invoices SET body = ? WHERE id = ?", (bytes(raw), victim["id"]))
    conn.commit()
    conn.close()
    res = harness.verify()
    assert res.returncode == 1
    assert victim["id"] in res.stderr and "fiscal number 2" in res.stderr


def test_deleted_invoice_is_detected(harness):
    bodies = _seal_some(harness)
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    conn.execute("DELETE FROM invoices WHERE id = ?", (bodies[1]["id"],))
    conn.commit()
    conn.close()
    res = harness.verify()
    assert res.returncode == 1
    assert "chain broken" in res.stderr and bodies[2]["id"] in res.stderr


def test_deleted_last_invoice_is_detected(harness):
    bodies = _seal_some(harness)
    conn = sqlite3.connect(harness.data_dir / "agent.db")
    conn.execute("DELETE FROM invoices WHERE id = ?", (bodies[-1]["id"],))
    conn.commit()
    conn.close()
    res = harness.verify()
    assert res.returncode == 1 and "missing" in res.stderr


def test_clock_backwards_never_signs_earlier(harness):
    # The journal keeps the last timestamp per chain; an earlier clock reading is raised to it.
    from datetime import datetime, timezone

    from agent.config import zone
    from fiscal.signing import load_private_key
    from agent.identity import OutletIdentity
    from agent.journal import Journal
    from agent.service import AgentService
    from agent.config import load_config

    harness.add_credential(harness.credential(1, 100))
    config = load_config(harness.data_dir)
    now = datetime.now(timezone.utc)
    times = iter([now + timedelta(seconds=5), now - timedelta(hours=1)])
    service = AgentService.open(config)
    service.journal.close()
    journal = Journal(config.db_path, service.identity, load_private_key(config.key_path), zone("Africa/Kinshasa"),
                      clock=lambda: next(times))
    journal.start()
    service.journal = journal
    try:
        first = service.journal.submit(service.prepare(invoice("CLK1"))).result(10).invoice
        second = service.journal.submit(service.prepare(invoice("CLK2"))).result(10).invoice
    finally:
        journal.close()
    assert second["security"]["timestamp"] == first["security"]["timestamp"]
    assert journal.last_clock_skew == 3605.0
