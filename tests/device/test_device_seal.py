"""Device mode through the real daemon and a simulated MCF on a real pseudo-terminal."""
from __future__ import annotations

import pytest

from tests.device.device_support import MID, device_health, wait_for
from tests.support import NIF, invoice


@pytest.mark.clock_edges
def test_device_mode_returns_the_devices_elements_unchanged(agent, sim):
    agent.start()
    status, body, _ = agent.post("/v1/invoices", invoice("dev-1", 3))
    assert status == 201, body
    assert body["mode"] == "device"
    last = sim.engine.state.last_invoice
    sec = body["security"]
    assert sec["authority_id"] == MID
    assert sec["code"] == last.sig and len(sec["code"]) == 24
    assert sec["counters"]["label"] == f"1/1 FV"
    assert sec["fiscal_number"] == sim.tc == 1
    assert sec["qr_payload"] == f"RDCDEF01;{MID};{last.sig};{NIF};{last.dt}"
    assert body["totals"]["total"] == last.mv
    conn = agent.db()
    try:
        row = conn.execute("SELECT chain_key FROM invoices WHERE request_id='dev-1'").fetchone()
        assert row["chain_key"] == f"device:{MID}"
        assert conn.execute("SELECT count(*) FROM device_intents").fetchone()[0] == 0
    finally:
        conn.close()
    # A retry answers the same invoice; the device normalized once.
    status, again, _ = agent.post("/v1/invoices", invoice("dev-1", 3))
    assert status == 201 and again["security"]["code"] == sec["code"]
    status, second, _ = agent.post("/v1/invoices", invoice("dev-2", 10))
    assert status == 201 and second["security"]["counters"]["label"] == "2/2 FV"
    assert sim.tc == 2
    res = agent.verify()
    assert res.returncode == 0, res.stdout + res.stderr
    health = device_health(agent)
    assert health["mode"] == "device"
    dev = health["device"]
    assert dev["available"] is True and dev["mid"] == MID and dev["nif"] == NIF
    assert dev["taxpayer"]["name"] == "TEST SARL"
    assert dev["tax_rates"] == {"checked": True, "mismatches": []}
    assert dev["dgi_link"]["state"] == "CON" and dev["dgi_link"]["stale"] is False


def test_subtotal_mismatch_cancels_and_names_both_amounts(agent, sim):
    """A device whose 33h VAT for group B is 0.03 above the tax engine's."""
    from decimal import Decimal

    from simulator.device import Reply

    device = sim.engine.device
    original = device._handlers[0x33]

    def skewed(data: bytes) -> Reply:
        reply = original(data)
        fields = reply.data.decode().split(",")
        fields[18] = f"{Decimal(fields[18]) + Decimal('0.03'):.2f}"  # MTB (MV, MVA..MVP, MTA, MTB)
        return Reply(",".join(fields).encode())

    device._handlers[0x33] = skewed
    agent.start()
    status, body, _ = agent.post("/v1/invoices", invoice("mm-1", 2))
    assert status == 422, body
    vat_b = [e for e in body["errors"] if e["field"] == "totals.by_group.B.vat"]
    assert vat_b and vat_b[0]["message"] == "device 28.03, agent 28.00", body
    assert "28.03" in body["detail"] and "28.00" in body["detail"]
    assert sim.tc == 0 and sim.engine.device.invoice is None  # cancelled (38h C), nothing normalized
    conn = agent.db()
    try:
        assert conn.execute("SELECT count(*) FROM device_intents").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 0
    finally:
        conn.close()
    device._handlers[0x33] = original
    status, body, _ = agent.post("/v1/invoices", invoice("mm-2", 2))
    assert status == 201 and body["mode"] == "device"


def test_reused_invoice_number_is_a_clear_409(agent, sim):
    agent.start()
    assert agent.post("/v1/invoices", invoice("fn-1", invoice_number="F/SAME"))[0] == 201
    status, body, _ = agent.post("/v1/invoices", invoice("fn-2", invoice_number="F/SAME"))
    assert status == 409, body
    assert body["type"] == "/problems/invoice-number-reused" and "F/SAME" in body["detail"]
    assert sim.tc == 1


def test_invoices_are_serialized_and_the_api_stays_responsive(agent, sim):
    import threading
    import time

    agent.start()
    sim.faults.set("delay_ms", 120)  # every answer 120 ms late: an invoice takes about 1 s
    results: dict[str, tuple] = {}

    def post(rid: str) -> None:
        results[rid] = agent.post("/v1/invoices", invoice(rid, 2))

    threads = [threading.Thread(target=post, args=(f"slow-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    health_times = []
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        status, _, _ = agent.get("/v1/health")
        health_times.append(time.monotonic() - started)
        assert status == 200
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert len(health_times) >= 5 and max(health_times) < 0.5, health_times  # invoices take ~2 s
    labels = sorted(r[1]["security"]["counters"]["label"] for r in results.values())
    assert [r[0] for r in results.values()] == [201, 201], results
    assert labels == ["1/1 FV", "2/2 FV"] and sim.tc == 2


def test_unplugged_device_falls_back_to_delegated_then_comes_back(agent, sim):
    agent.start()
    assert agent.post("/v1/invoices", invoice("u-1"))[1]["mode"] == "device"
    sim.unplug()
    status, body, _ = agent.post("/v1/invoices", invoice("u-2"))
    assert status == 201 and body["mode"] == "delegated", body
    health = device_health(agent)
    assert health["device"]["available"] is False and health["mode"] == "delegated"
    assert health["device"]["last_error"]
    sim.replug()
    wait_for(lambda: device_health(agent)["mode"] == "device", timeout=10)
    status, body, _ = agent.post("/v1/invoices", invoice("u-3"))
    assert status == 201 and body["mode"] == "device", body
    assert sim.tc == 2
    assert agent.verify().returncode == 0


def test_power_loss_between_normalized_and_answered_is_recovered_by_the_driver(agent, sim):
    agent.start()
    sim.faults.set("power_loss", 1)
    status, body, _ = agent.post("/v1/invoices", invoice("pl-1", 3))
    assert status == 201, body
    assert body["mode"] == "device" and sim.tc == 1
    assert body["security"]["code"] == sim.engine.state.last_invoice.sig
    assert body["security"]["counters"]["label"] == "1/1 FV"


def test_device_silent_after_38h_gives_503_then_the_retry_gets_the_invoice(agent, sim):
    from simulator.device import Reply  # noqa: F401

    device = sim.engine.device
    original = device._handlers[0x38]

    def normalize_then_go_silent(data: bytes):
        reply = original(data)
        if data != b"C":
            sim.faults.set("drop", 1)  # this answer is lost...
            sim.faults.set("silence", 10_000)  # ...and the device stops answering
        return reply

    device._handlers[0x38] = normalize_then_go_silent
    agent.start()
    status, body, _ = agent.post("/v1/invoices", invoice("lost-1", 2))
    assert status == 503, body
    assert body["type"] == "/problems/device-outcome-unknown"
    assert sim.tc == 1
    device._handlers[0x38] = original
    sim.faults.clear()
    status, again, _ = agent.post("/v1/invoices", invoice("lost-1", 2))
    assert status == 201, again
    assert again["security"]["code"] == sim.engine.state.last_invoice.sig
    assert sim.tc == 1
    assert agent.verify().returncode == 0


def test_sim_url_in_the_agent_config_works(tmp_path):
    """device.url = "sim:///path/state.json": the driver imports the simulator on demand."""
    from agent.config import write_default_config
    from tests.support import AgentHarness, free_port

    h = AgentHarness(tmp_path / "agent")
    state = tmp_path / "insim" / "state.json"
    state.parent.mkdir()
    write_default_config(h.data_dir, agent__port=h.port, cloud__url=f"http://127.0.0.1:{free_port()}",
                         credential__check_interval=3600, signer__policy=["device"],
                         device__url=f"sim://{state}")
    try:
        h.start()
        status, body, _ = h.post("/v1/invoices", invoice("sim-1"))
        assert status == 201 and body["mode"] == "device", body
        assert body["security"]["authority_id"] == "SIM0000001-1"  # the simulator's default device
    finally:
        h.stop()


def test_open_transport_imports_the_simulator_for_sim_urls(tmp_path):
    import subprocess
    import sys

    from tests.support import ROOT

    code = ("import sys; from drivers.usb_fiscal_memory.transport import open_transport; "
            "assert 'simulator.inprocess' not in sys.modules; "
            f"t = open_transport('sim://{tmp_path}/s.json'); print(type(t).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "InProcessTransport", out.stderr


def test_a_quick_replug_between_invoices_keeps_device_mode(agent, sim):
    """The agent's open handle is stale after a replug: it reopens the port instead of falling back."""
    agent.start()
    assert agent.post("/v1/invoices", invoice("rp-1"))[1]["mode"] == "device"
    sim.unplug()
    sim.replug()
    status, body, _ = agent.post("/v1/invoices", invoice("rp-2"))
    assert status == 201 and body["mode"] == "device", body
    assert sim.tc == 2


def test_link_lost_after_c0h_without_normalization_cancels_and_falls_back(agent, sim):
    device = sim.engine.device
    original = device._handlers[0x31]
    fired = []

    def item_then_silence(data: bytes):
        reply = original(data)
        if not fired:
            fired.append(1)
            sim.faults.set("silence", 4)  # the next 31h and its 3 resends get no answer
        return reply

    device._handlers[0x31] = item_then_silence
    agent.start()
    status, body, _ = agent.post("/v1/invoices", invoice("ll-1", 3))
    assert status == 201 and body["mode"] == "delegated", body
    assert sim.tc == 0 and sim.engine.device.invoice is None  # cancelled (38h C) after C1h said "not ours"
    conn = agent.db()
    try:
        assert conn.execute("SELECT count(*) FROM device_intents").fetchone()[0] == 0
    finally:
        conn.close()
    assert agent.verify().returncode == 0
