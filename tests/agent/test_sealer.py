"""The sealing process (agent/sealer.py): delegated seals committed by a second process.

Real daemon, real child process, real SQLite file. What must hold whatever happens to the child:
every invoice a POS saw sealed is stored with the number it was told, no number is used twice or
skipped, the chain verifies, and every request gets exactly one answer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.agent.test_invariants import _hammer
from tests.support import invoice

START = 7001


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _sealer_pid(agent) -> int | None:
    for pid in _children(agent.proc.pid):
        try:
            if b"agent.sealer" in open(f"/proc/{pid}/cmdline", "rb").read():
                return pid
        except OSError:
            pass
    return None


def _wait_state(agent, state: str, timeout: float = 20.0, nudge: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        health = agent.get("/v1/health", key=None)[1]
        if health["sealing_process"] == state:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"sealing process still {health['sealing_process']!r}, wanted {state!r}")
        if nudge:  # the process starts when sales overlap: two at once
            n += 1
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda rid: agent.post("/v1/invoices", invoice(rid))[0],
                                        [f"{nudge}-{n}-a", f"{nudge}-{n}-b"]))
            assert answers == [201, 201]
        time.sleep(0.1)


def _pid_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a child of ours that exited but was not reaped yet counts as gone
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_one_cashier_at_a_time_never_starts_it(harness):
    harness.add_credential(harness.credential(START, START + 999))
    harness.start()
    for i in range(30):
        assert harness.post("/v1/invoices", invoice(f"S{i}"))[0] == 201
    time.sleep(0.5)
    assert harness.get("/v1/health", key=None)[1]["sealing_process"] == "stopped"
    assert _sealer_pid(harness) is None


def test_starts_when_sales_overlap_and_seals_in_order(harness):
    harness.add_credential(harness.credential(START, START + 999))
    harness.start()
    assert harness.get("/v1/health", key=None)[1]["sealing_process"] == "stopped"
    assert _sealer_pid(harness) is None  # an idle agent runs one process
    _wait_state(harness, "ready", nudge="W")
    assert _sealer_pid(harness) is not None
    results = _hammer(harness, 4, 50)
    assert all(status == 201 for status, _ in results.values())
    stored = harness.numbers()
    assert stored == list(range(START, START + len(stored)))
    assert set(n for _, n in results.values()) <= set(stored)
    # A retry is answered by the child from the journal: same invoice, no new number.
    again = harness.post("/v1/invoices", invoice("C0-0", n_items=3))
    assert again[0] == 201 and again[1]["security"]["fiscal_number"] == results["C0-0"][1]
    assert harness.numbers() == stored
    res = harness.verify()
    assert res.returncode == 0, res.stdout + res.stderr


def test_sigkill_of_the_sealing_process_under_load_loses_nothing(harness):
    harness.add_credential(harness.credential(START, START + 4999))
    harness.start()
    _wait_state(harness, "ready", nudge="W")
    child = _sealer_pid(harness)
    seen: dict[str, tuple[int, int | None]] = {}
    # Strike when a third of the sales are answered: mid-run whatever the machine's speed
    # (a fixed sleep let a fast run finish before the kill, and tested nothing).
    third = threading.Event()
    t = threading.Thread(target=lambda: seen.update(
        _hammer(harness, 8, 120, prefix="K", progress=lambda n: n >= 320 and third.set())))
    t.start()
    assert third.wait(60), "the sales did not get going"
    os.kill(child, signal.SIGKILL)
    t.join()
    # The POS saw no error: the jobs the child had not answered were sealed (or answered) in-process.
    assert len(seen) == 960 and all(status == 201 for status, _ in seen.values()), \
        {k: v for k, v in seen.items() if v[0] != 201}
    numbers = [n for _, n in seen.values()]
    assert len(set(numbers)) == len(numbers)  # no number given to two sales
    stored = harness.numbers()
    assert stored == list(range(START, START + len(stored)))  # no gap, no repeat
    conn = harness.db()
    rows = dict(conn.execute("SELECT request_id, fiscal_number FROM invoices").fetchall())
    conn.close()
    assert all(rows[rid] == n for rid, (_, n) in seen.items())
    # The daemon logs the loss when the link closes; the log line may trail the last answer.
    deadline = time.monotonic() + 10
    while "sealer.stopped" not in harness.read_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sealer.stopped" in harness.read_log()
    # Sales go on in-process, and a later sale starts a new child after the back-off.
    time.sleep(1.2)
    _wait_state(harness, "ready", nudge="AFTER")
    assert _sealer_pid(harness) not in (None, child)
    res = harness.verify()
    assert res.returncode == 0, res.stdout + res.stderr


def test_stops_when_idle_and_starts_again(harness):
    harness.configure(sealing__process_idle_seconds=1)
    harness.add_credential(harness.credential(START, START + 999))
    harness.start()
    _wait_state(harness, "ready", nudge="A")
    child = _sealer_pid(harness)
    _wait_state(harness, "stopped", timeout=10)
    assert _pid_gone(child)
    assert "sealer.idle_stop" in harness.read_log()
    assert "sealer.stopped" not in harness.read_log()  # an idle stop is not a failure
    _wait_state(harness, "ready", nudge="B")
    stored = harness.numbers()
    assert stored == list(range(START, START + len(stored)))


def test_the_child_does_not_outlive_a_killed_agent(harness):
    harness.add_credential(harness.credential(START, START + 999))
    harness.start()
    _wait_state(harness, "ready", nudge="A")
    child = _sealer_pid(harness)
    harness.kill()  # SIGKILL: no chance to stop the child
    assert _pid_gone(child), "the sealing process must exit when the daemon's end of its link closes"


def test_off_keeps_one_process(harness):
    harness.configure(sealing__process="off")
    harness.add_credential(harness.credential(START, START + 99))
    harness.start()
    for i in range(5):
        assert harness.post("/v1/invoices", invoice(f"O{i}"))[0] == 201
    assert harness.get("/v1/health", key=None)[1]["sealing_process"] == "off"
    assert _sealer_pid(harness) is None


def test_the_warm_up_rehearsal_leaves_nothing(harness):
    # Before READY the daemon seals a sample invoice and rolls it back (agent/journal.py rehearse).
    harness.add_credential(harness.credential(START, START + 9))
    harness.start()
    conn = harness.db()
    assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 0
    assert tuple(conn.execute("SELECT state, next_number FROM credentials").fetchone()) == ("ready", START)
    assert conn.execute("SELECT count(*) FROM chains").fetchone()[0] == 0
    conn.close()
    assert "credential.activated" not in harness.read_log()
    status, body, _ = harness.post("/v1/invoices", invoice("R-FIRST"))
    assert status == 201 and body["security"]["fiscal_number"] == START
    assert body["chain"]["prev_hash"] == "0" * 64
    assert harness.read_log().count("credential.activated") == 1
