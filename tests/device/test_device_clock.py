"""The device's DT, read by the agent as outlet-local time, is the real time of the sale.

The MCF keeps the outlet's local time and DT carries no zone; the agent labels it with the
outlet's zone (journal.record_device_seal). A simulator stamping UTC digits made every sealed
invoice an hour early in Kinshasa: this checks the two sides agree, end to end.
"""
from __future__ import annotations

import pytest

from datetime import datetime, timezone

from tests.device.device_support import SimDevice, device_agent
from tests.support import invoice


def _seal_and_bracket(agent, request_id: str) -> tuple[dict, datetime, datetime]:
    # DT has whole seconds, cut: the stamp lies between the second the request started in and
    # the moment its answer came back, exactly, however slow the machine.
    before = datetime.now(timezone.utc).replace(microsecond=0)
    status, body, _ = agent.post("/v1/invoices", invoice(request_id, 3))
    after = datetime.now(timezone.utc)
    assert status == 201, body
    assert body["mode"] == "device"
    return body, before, after


@pytest.mark.clock_edges
def test_device_invoice_time_is_the_real_time_in_kinshasa(agent, sim):
    agent.start()
    body, before, after = _seal_and_bracket(agent, "clock-1")
    stamp = datetime.fromisoformat(body["security"]["timestamp"])
    assert stamp.utcoffset().total_seconds() == 3600  # labelled Kinshasa time
    assert before <= stamp.astimezone(timezone.utc) <= after, (stamp, before, after)
    # The QR carries the device's DT as is: the same wall-clock digits.
    assert body["security"]["qr_payload"].endswith(";" + stamp.strftime("%Y%m%d%H%M%S"))


def test_device_invoice_time_is_the_real_time_in_lubumbashi(tmp_path):
    sim = SimDevice(tmp_path / "sim", time_zone="Africa/Lubumbashi")
    agent = device_agent(tmp_path / "agent", sim, agent__time_zone="Africa/Lubumbashi")
    try:
        agent.start()
        body, before, after = _seal_and_bracket(agent, "clock-east")
        stamp = datetime.fromisoformat(body["security"]["timestamp"])
        assert stamp.utcoffset().total_seconds() == 7200
        assert before <= stamp.astimezone(timezone.utc) <= after, (stamp, before, after)
    finally:
        agent.stop()
        sim.stop()
