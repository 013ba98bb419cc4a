"""SIGKILL of the real agent daemon at each step of the invoice flow, then restart.

The point of death is chosen on the simulated MCF, not inside the agent: a hold fault
(simulator/faults.py) makes the device busy (SYN, so the agent keeps waiting) on one frame of
the flow; the test waits until the device holds it, SIGKILLs the agent process and drops the
held frame. "normalized" (the 38h answer read by the agent, not yet recorded) also holds the
agent journal's write lock, releases the answer and kills once the agent has read it off the pty.
After the restart, start-up recovery reads C1h; the POS retries the same request_id and gets the
invoice sealed exactly once on the device.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.device.device_support import SimDevice, device_agent, wait_for
from tests.support import AgentHarness, invoice

# step -> (the hold that stops the flow there, was the invoice normalized before the agent died?)
STEPS = {
    "open": ("hold=31#1", False),            # C0h acknowledged; dies as the first 31h arrives
    "item:2": ("hold=31#3", False),          # two 31h acknowledged; dies as the third arrives
    "normalizing": ("hold=38", False),       # everything sent but 38h, which never runs
    "38h-sent": ("hold_answer=38", True),    # 38h ran on the device, answer not read
    "normalized": ("hold_answer=38", True),  # 38h answer read, not recorded
}


def _post_and_die_at_hold(h: AgentHarness, sim: SimDevice, body: dict, *, answer_read: bool = False) -> None:
    """POST the invoice; when the device holds the armed frame, SIGKILL the agent there."""
    outcome: dict = {}

    def post() -> None:
        try:
            outcome["answer"] = h.post("/v1/invoices", body)
        except OSError as exc:
            outcome["error"] = exc

    poster = threading.Thread(target=post)
    poster.start()
    assert sim.faults.wait_held(timeout=30) is not None, "the device never received the frame to hold"
    lock = None
    try:
        if answer_read:
            lock = h.db()
            lock.execute("BEGIN IMMEDIATE")  # the agent can read the answer but not record it
            sim.faults.release(carry_on=True)
            sim.wait_answer_read()
        os.kill(h.proc.pid, signal.SIGKILL)
        poster.join(30)
    finally:
        if lock is not None:
            lock.rollback()
            lock.close()
        sim.faults.release(carry_on=False)  # the held frame is lost with the agent
    assert "answer" not in outcome, f"the agent answered instead of dying: {outcome['answer']}"
    assert isinstance(outcome.get("error"), OSError)


@pytest.mark.parametrize("step", list(STEPS))
def test_sigkill_at_each_step_then_exactly_once(tmp_path, sim, step):
    hold, normalized = STEPS[step]
    h = device_agent(tmp_path / "agent", sim)
    try:
        h.start()
        sim.faults.apply(hold)  # stops the first invoice at this step
        _post_and_die_at_hold(h, sim, invoice("crash-1", 3), answer_read=step == "normalized")
        h.proc.wait(10)
        assert h.proc.returncode == -9
        wait_for(lambda: sim.tc == (1 if normalized else 0), timeout=5)
        if not normalized:
            assert sim.engine.device.invoice is not None  # left open on the device
        code_on_device = sim.engine.state.last_invoice.sig if normalized else None
        conn = h.db()
        try:
            assert conn.execute("SELECT count(*) FROM device_intents").fetchone()[0] == 1
        finally:
            conn.close()
        h.stop()
        h.start()
        status, body, _ = h.post("/v1/invoices", invoice("crash-1", 3))
        assert status == 201, body
        assert body["mode"] == "device"
        assert sim.tc == 1 and sim.journal_fns() == ["F/crash-1"]  # one normalization per sale
        assert sim.engine.device.invoice is None
        if normalized:
            assert body["security"]["code"] == code_on_device
        assert body["security"]["counters"]["label"] == "1/1 FV"
        # Again, and a next sale: still exactly once, chain intact.
        assert h.post("/v1/invoices", invoice("crash-1", 3))[1]["security"]["code"] == body["security"]["code"]
        assert h.post("/v1/invoices", invoice("crash-2", 2))[1]["security"]["counters"]["label"] == "2/2 FV"
        assert sim.tc == 2
        conn = h.db()
        try:
            assert conn.execute("SELECT count(*) FROM device_intents").fetchone()[0] == 0
        finally:
            conn.close()
        res = h.verify()
        assert res.returncode == 0, res.stdout + res.stderr
        log = h.read_log()
        assert ('"event": "device.intent_recovered"' in log) == normalized
    finally:
        h.stop()


def test_recovered_fc_is_exact_for_an_advance_after_a_sale(tmp_path, sim):
    """FVC counts FV and FT together: FC must come from the C0h answer kept in the intent."""
    h = device_agent(tmp_path / "agent", sim)
    try:
        h.start()
        assert h.post("/v1/invoices", invoice("fv-1"))[1]["security"]["counters"]["label"] == "1/1 FV"
        h.stop()
        h.start()
        sim.faults.apply("hold_answer=38")  # 38h runs, the agent dies before its answer
        _post_and_die_at_hold(h, sim, invoice("ft-1", type="FT"))
        h.proc.wait(10)
        wait_for(lambda: sim.tc == 2, timeout=5)
        h.stop()
        h.start()
        status, body, _ = h.post("/v1/invoices", invoice("ft-1", type="FT"))
        assert status == 201, body
        assert body["security"]["counters"]["label"] == "1/2 FT"  # not 2/2 (FVC)
        assert body["security"]["code"] == sim.engine.state.last_invoice.sig
        assert '"event": "device.fc_approximate"' not in h.read_log()
        assert h.verify().returncode == 0
    finally:
        h.stop()
