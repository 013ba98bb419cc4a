"""SIGKILL of the real agent daemon at each step of the invoice flow, then restart.

The kill is triggered inside the agent at the exact step (test-mode env var
STALELA_DEVICE_TEST_KILL_AT, an `on_step` name, or "38h-sent": right after the 38h frame was
written to the pty). After the restart, start-up recovery reads C1h; the POS retries the same
request_id and gets the invoice sealed exactly once on the device.
"""
from __future__ import annotations

import pytest

from agent.device.signer import KILL_ENV
from tests.device.device_support import device_agent, start_with_env, wait_for
from tests.support import invoice

# step -> was the invoice normalized by the device before the agent died?
STEPS = {
    "open": False,          # after C0h was acknowledged
    "item:2": False,        # after some 31h
    "normalizing": False,   # everything sent but 38h
    "38h-sent": True,       # 38h on the wire, answer not read
    "normalized": True,     # 38h answer read, not recorded
}


@pytest.mark.parametrize("step", list(STEPS))
def test_sigkill_at_each_step_then_exactly_once(tmp_path, sim, step):
    h = device_agent(tmp_path / "agent", sim)
    try:
        start_with_env(h, {KILL_ENV: step})  # the kill fires on the first invoice
        try:
            h.post("/v1/invoices", invoice("crash-1", 3))
            raise AssertionError("the agent should have died")
        except OSError:
            pass
        h.proc.wait(10)
        assert h.proc.returncode == -9
        normalized = STEPS[step]
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
        start_with_env(h, {KILL_ENV: "38h-sent"})
        try:
            h.post("/v1/invoices", invoice("ft-1", type="FT"))
            raise AssertionError("the agent should have died")
        except OSError:
            pass
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
