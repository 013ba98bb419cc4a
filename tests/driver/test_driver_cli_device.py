"""`stalela device ...` against a scripted device registered as a port scheme."""
from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from agent.cli.device import _framing_self_check, device
from drivers.usb_fiscal_memory import transport as transport_mod
from drivers.usb_fiscal_memory.framing import Status, decode_command, encode_response
from drivers.usb_fiscal_memory.transport_dummy import DummyTransport

RATES = ",".join(["0.00", "16.00"] + ["0.00"] * 14)


def c1h() -> bytes:
    return (
        f"AB01000001-1,A1234567B,20250301100320,49,46,3,20250301100305,FV,"
        f"QWERTYUIOPLKJHGFDSAZXCVB,FAC05/2025,13000.00,{RATES}"
    ).encode()


TAXPAYER = {b"I0": b"Restaurant ABC", b"I1": b"Bd 30 Juin", b"I2": b"Kinshasa", b"I3": b"012345678", b"I4": b"info@abc.cd"}


def responder(status: Status):
    def answer(raw: bytes) -> bytes:
        cmd = decode_command(raw)
        data = {0xC1: c1h(), 0xC2: b"49,49,20250301100118,DIS"}.get(cmd.cmd) or TAXPAYER.get(cmd.data, b"E:?")
        return encode_response(cmd.seq, cmd.cmd, data, status.to_bytes())

    return answer


@pytest.fixture
def scripted(monkeypatch):
    state = {"status": Status()}
    monkeypatch.setitem(
        transport_mod._SCHEMES, "scripted",
        lambda url, **kw: DummyTransport(responder=responder(state["status"]), spy=kw.get("spy")),
    )
    return state


def run(*args: str):
    return CliRunner().invoke(device, list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for name, command in device.commands.items():
        assert command.help and "Example:" in command.help, name
        result = run(name, "--help")
        assert result.exit_code == 0 and "Example:" in result.output


def test_info_is_readable_and_warns_about_old_dgi_link(scripted):
    result = run("info", "--port", "scripted://mcf")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "AB01000001-1" in out and "A1234567B" in out and "total 49, sales 46, credit notes 3" in out
    assert "FAC05/2025" in out and "B=16.00" in out
    assert "I0 name     Restaurant ABC" in out and "info@abc.cd" in out
    assert "DIS (not connected)" in out and "01/03/2025 10:01:18" in out
    assert "more than 1 day" in out


def test_info_json(scripted):
    import json

    result = run("info", "--port", "scripted://mcf", "--json")
    doc = json.loads(result.output)
    assert doc["status"]["mid"] == "AB01000001-1" and doc["server_link"]["stale"] is True
    assert doc["taxpayer"]["name"] == "Restaurant ABC"


def test_status_shows_flags(scripted):
    scripted["status"] = Status(memory_low=True, invoice_open=True)
    result = run("status", "--port", "scripted://mcf")
    assert "invoice_open, memory_low" in result.output


def test_spy_prints_hex_dump(scripted):
    result = run("spy", "--port", "scripted://mcf")
    assert result.exit_code == 0
    assert " TX 0000  01 24 " in result.output and " RX 0000  01 " in result.output
    assert "Restaurant ABC" in result.output


def test_selftest_passes_and_fails_cleanly(scripted):
    ok = run("selftest", "--port", "scripted://mcf")
    assert ok.exit_code == 0 and "self-test passed" in ok.output and "C1h round trip" in ok.output
    scripted["status"] = Status(memory_full=True, clock_not_set=True)
    bad = run("selftest", "--port", "scripted://mcf")
    assert bad.exit_code == 1
    assert "fiscal memory full" in bad.output and "clock not set" in bad.output
    assert "Traceback" not in bad.output


def test_framing_self_check_is_clean():
    assert _framing_self_check() == []


def test_missing_port_is_a_clean_error():
    result = run("status", "--port", "/dev/ttyDOESNOTEXIST7")
    assert result.exit_code == 1
    assert "DeviceNotFound" in result.output and "Traceback" not in result.output


def test_silent_device_is_a_clean_error(monkeypatch):
    class Silent(DummyTransport):
        def _read(self, max_bytes: int, timeout: float) -> bytes:
            time.sleep(timeout)  # real time: the CLI's Link runs on the real clock
            return b""

    monkeypatch.setitem(transport_mod._SCHEMES, "silent", lambda url, **kw: Silent())
    result = run("status", "--port", "silent://x")
    assert result.exit_code == 1 and "TooManyRetries" in result.output


def test_scan_lists_sections(monkeypatch):
    import agent.cli.device as cli_mod

    monkeypatch.setattr(cli_mod, "discover", lambda pairs: [])
    result = run("scan")
    assert result.exit_code == 0
    assert "USB candidates:" in result.output and "Serial ports:" in result.output
    bad = CliRunner().invoke(device, ["scan", "--vid-pid", "zz"])
    assert bad.exit_code == 2


# -- the outlet's zone: the MCF keeps the outlet's local time ---------------------------------
@pytest.fixture
def utc_machine(monkeypatch):
    """This machine's own zone is UTC, as on most servers (the MCF is not)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _simulated_mcf(tmp_path, zone: str, **state) -> tuple[object, str]:
    """A simulated MCF keeping `zone`'s local time, reachable in process at the returned URL."""
    import dataclasses

    from simulator.engine import MCFEngine
    from simulator.inprocess import attach
    from simulator.state import FiscalState

    engine = MCFEngine(tmp_path / f"mcf-{zone.replace('/', '-')}.json", provision=FiscalState.new(time_zone=zone))
    if state:
        engine.device.state = dataclasses.replace(engine.state, **state)
        engine.store.save(engine.device.state)
    return engine, attach(engine)


def _drift(output: str, zone: str) -> int:
    import re

    match = re.search(rf"drift (\d+) s against {zone}", output)
    assert match, output
    return int(match.group(1))


def test_selftest_measures_clock_drift_in_the_outlet_zone(tmp_path, utc_machine):
    _, url = _simulated_mcf(tmp_path, "Africa/Lubumbashi")
    right = run("selftest", "--port", url, "--time-zone", "Africa/Lubumbashi")
    assert right.exit_code == 0, right.output
    assert "WARN" not in right.output
    assert _drift(right.output, "Africa/Lubumbashi") < 300
    # Read in another zone, the same clock is an hour off: the zone matters, not the machine's.
    wrong = run("selftest", "--port", url, "--time-zone", "Africa/Kinshasa")
    assert 3500 < _drift(wrong.output, "Africa/Kinshasa") < 3700
    assert "WARN" in wrong.output
    default = run("selftest", "--port", _simulated_mcf(tmp_path, "Africa/Kinshasa")[1])
    assert _drift(default.output, "Africa/Kinshasa") < 300 and "WARN" not in default.output


def test_selftest_takes_the_zone_of_an_enrolled_agent(tmp_path, utc_machine):
    from tests.support import AgentHarness

    agent = AgentHarness(tmp_path / "agent")  # enrolled for Africa/Kinshasa
    _, url = _simulated_mcf(tmp_path, "Africa/Kinshasa")
    result = run("selftest", "--port", url, "--data", str(agent.data_dir))
    assert result.exit_code == 0, result.output
    assert _drift(result.output, "Africa/Kinshasa") < 300 and "WARN" not in result.output


def test_zone_options_refuse_cleanly(tmp_path):
    _, url = _simulated_mcf(tmp_path, "Africa/Kinshasa")
    bad_zone = CliRunner().invoke(device, ["selftest", "--port", url, "--time-zone", "Mars/Olympus"])
    assert bad_zone.exit_code == 2 and "'Mars/Olympus' is not a time zone" in bad_zone.output
    both = CliRunner().invoke(device, ["info", "--port", url, "--data", str(tmp_path), "--time-zone", "UTC"])
    assert both.exit_code == 2 and "give one of them" in both.output
    not_enrolled = CliRunner().invoke(device, ["selftest", "--port", url, "--data", str(tmp_path / "none")])
    assert not_enrolled.exit_code == 1 and "no enrolled agent" in not_enrolled.output
    assert not (tmp_path / "none").exists()
    for result in (bad_zone, both, not_enrolled):
        assert "Traceback" not in result.output


@pytest.mark.parametrize("hours_ago, stale", [(24.5, True), (23.5, False)])
def test_info_ages_the_dgi_link_in_the_outlet_zone(tmp_path, utc_machine, hours_ago, stale):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    last = datetime.now(ZoneInfo("Africa/Kinshasa")) - timedelta(hours=hours_ago)
    engine, url = _simulated_mcf(tmp_path, "Africa/Kinshasa", dgi_last_connection=last.strftime("%Y%m%d%H%M%S"))
    engine.faults.set("dgi_offline", True)  # the link stays where it was
    result = run("info", "--port", url)
    assert result.exit_code == 0, result.output
    assert last.strftime("%d/%m/%Y %H:%M:%S") in result.output
    assert ("more than 1 day" in result.output) is stale
