"""Device status in /v1/health: status bits, tax rates, unavailability."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from tests.device.device_support import SimDevice, device_agent, device_health, wait_for
from tests.support import invoice


def test_status_bits_and_rate_mismatch_show_in_health(tmp_path):
    sim = SimDevice(tmp_path / "sim", rates={"C": "8.00"})  # a device still on the pre-2026 rate
    h = device_agent(tmp_path / "agent", sim)
    for flag in ("memory_nearly_full", "daily_report_required", "clock_not_set"):
        sim.faults.set(flag, True)
    try:
        h.start()
        # The rates are read after the first status: health says `checked: false` until then.
        dev = wait_for(lambda: (d := device_health(h)["device"])["reachable"] is not None
                       and d["tax_rates"]["checked"] and d)
        bits = dev["status_bits"]
        assert bits["memory_nearly_full"] and bits["daily_report_required"] and bits["clock_not_set"], dev
        assert not bits["memory_full"]
        assert dev["reachable"] is True and dev["available"] is False
        assert any("group C" in m and "8.00" in m for m in dev["tax_rates"]["mismatches"]), dev
        assert any("nearly full" in a for a in dev["alerts"])
        assert any("clock" in a.lower() for a in dev["alerts"])
        # Not ready: the policy falls back to delegated.
        status, body, _ = h.post("/v1/invoices", invoice("hb-1"))
        assert status == 201 and body["mode"] == "delegated", body
        log = h.read_log()
        assert '"event": "device.tax_rate_mismatch"' in log
        assert log.count('"event": "device.status_bits"') == 1
    finally:
        h.stop()
        sim.stop()


def test_stale_dgi_link_is_alerted(tmp_path):
    sim = SimDevice(tmp_path / "sim")
    sim.faults.set("dgi_offline", True)
    sim.engine.device.state = dataclasses.replace(sim.engine.device.state, dgi_last_connection="20250101120000")
    h = device_agent(tmp_path / "agent", sim)
    try:
        h.start()
        dev = wait_for(lambda: (d := device_health(h)["device"])["dgi_link"] is not None and d)
        assert dev["dgi_link"]["stale"] is True and dev["dgi_link"]["state"] == "DIS", dev
        assert any("DGI server" in a for a in dev["alerts"])
        assert '"event": "device.dgi_link_stale"' in h.read_log()
    finally:
        h.stop()
        sim.stop()


def _kinshasa_dt(ago: timedelta = timedelta(0)) -> str:
    return (datetime.now(ZoneInfo("Africa/Kinshasa")) - ago).strftime("%Y%m%d%H%M%S")


def test_device_times_carry_the_outlet_zone_offset(tmp_path, monkeypatch):
    """The MCF keeps Kinshasa time with no offset; health says which instant that is."""
    monkeypatch.setenv("TZ", "UTC")  # the agent's machine on UTC, the outlet an hour ahead
    sim = SimDevice(tmp_path / "sim")
    h = device_agent(tmp_path / "agent", sim)
    try:
        h.start()
        for number in ("tz-1", "tz-2"):  # the C1h before the second one shows the first
            status, body, _ = h.post("/v1/invoices", invoice(number))
            assert status == 201 and body["mode"] == "device", body
        dev = wait_for(lambda: (d := device_health(h)["device"])["last_invoice"] is not None and d)
        now = datetime.now(timezone.utc)
        for value in (dev["clock"], dev["last_invoice"]["at"], dev["dgi_link"]["last_connection"]):
            assert value.endswith("+01:00"), dev
            assert abs(datetime.fromisoformat(value) - now) < timedelta(minutes=5), (value, now)
    finally:
        h.stop()
        sim.stop()


def test_dgi_link_age_is_counted_in_the_outlet_zone(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")  # naive "now" here would be an hour behind the MCF's clock
    sim = SimDevice(tmp_path / "sim")
    sim.faults.set("dgi_offline", True)
    sim.engine.device.state = dataclasses.replace(
        sim.engine.device.state, dgi_last_connection=_kinshasa_dt(timedelta(hours=24, minutes=30)))
    h = device_agent(tmp_path / "agent", sim)
    try:
        h.start()
        dev = wait_for(lambda: (d := device_health(h)["device"])["dgi_link"] is not None and d)
        assert dev["dgi_link"]["stale"] is True, dev
    finally:
        h.stop()
        sim.stop()
