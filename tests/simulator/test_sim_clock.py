"""The simulated MCF's clock keeps the outlet's local time, as a real MCF does (not the host's).

DT carries no zone: the SFE reads it as local time in the outlet's zone. A device that stamped
UTC digits made every invoice an hour early in Kinshasa (two in Lubumbashi).
"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import serial
from click.testing import CliRunner

from drivers.usb_fiscal_memory.framing import Deframer, decode_response, encode_command
from simulator.cli import sim
from simulator.engine import MCFEngine
from simulator.state import FiscalState, FiscalStore, StateError

from sim_helpers import Host

ROOT = Path(__file__).resolve().parents[2]
DT_FORMAT = "%Y%m%d%H%M%S"


def _utc_of(dt: str, zone: str) -> datetime:
    return datetime.strptime(dt, DT_FORMAT).replace(tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)


def _assert_is_now_in(read_dt, zone: str) -> None:  # type: ignore[no-untyped-def]
    """``read_dt()`` gives a DT that, read as local time in ``zone``, is the real time now.

    DT has whole seconds (cut, not rounded), so it lies between the second the read started
    in and the moment it ended: an exact bracket, whatever the machine's load.
    """
    before = datetime.now(timezone.utc).replace(microsecond=0)
    dt = read_dt()
    after = datetime.now(timezone.utc)
    assert before <= _utc_of(dt, zone) <= after, (dt, zone, before, after)


def _c1h_dt(host: Host) -> str:
    # One Host per device: a new SEQ each time, as the same SEQ+CMD twice would get the last
    # answer again (p. 6).
    return host.send(0xC1).text.split(",")[2]


def test_default_device_keeps_kinshasa_time(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json")
    assert engine.state.time_zone == "Africa/Kinshasa"
    _assert_is_now_in(lambda: _c1h_dt(Host(engine)), "Africa/Kinshasa")


def test_normalized_invoice_dt_is_outlet_local_time(tmp_path: Path) -> None:
    host = Host(MCFEngine(tmp_path / "m.json"))
    fields: list[str] = []
    _assert_is_now_in(lambda: fields.extend(host.sell("F1")) or fields[3], "Africa/Kinshasa")
    # The device remembers the same DT for C1h's last invoice (DFDT).
    assert host.send(0xC1).text.split(",")[6] == fields[3]


def test_lubumbashi_device_is_an_hour_ahead_of_kinshasa(tmp_path: Path) -> None:
    east = Host(MCFEngine(tmp_path / "east.json", provision=FiscalState.new(time_zone="Africa/Lubumbashi")))
    _assert_is_now_in(lambda: _c1h_dt(east), "Africa/Lubumbashi")
    west = Host(MCFEngine(tmp_path / "west.json"))
    gap = datetime.strptime(_c1h_dt(east), DT_FORMAT) - datetime.strptime(_c1h_dt(west), DT_FORMAT)
    assert timedelta(minutes=59) < gap < timedelta(minutes=61)


def test_daily_report_is_dated_in_local_time(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json", provision=FiscalState.new(time_zone="Africa/Lubumbashi"))
    _assert_is_now_in(lambda: engine.state.last_report_at, "Africa/Lubumbashi")  # put in service
    _assert_is_now_in(
        lambda: engine.device.daily_report_done() or engine.state.last_report_at, "Africa/Lubumbashi"
    )


def test_set_clock_is_local_time_in_the_devices_zone(tmp_path: Path) -> None:
    engine = MCFEngine(tmp_path / "m.json", provision=FiscalState.new(time_zone="Africa/Lubumbashi"))
    host = Host(engine)
    engine.device.set_clock(datetime(2026, 3, 1, 12, 25, 47))
    assert _c1h_dt(host).startswith("2026030112")
    engine.device.set_clock()  # back to the zone's current time
    _assert_is_now_in(lambda: _c1h_dt(host), "Africa/Lubumbashi")


def test_fiscal_memory_without_a_zone_is_a_kinshasa_device(tmp_path: Path) -> None:
    # Files written before the zone existed load as Kinshasa devices.
    path = tmp_path / "m.json"
    MCFEngine(path)
    raw = json.loads(path.read_text())
    del raw["time_zone"]
    path.write_text(json.dumps(raw))
    engine = MCFEngine(path)
    assert engine.state.time_zone == "Africa/Kinshasa"
    _assert_is_now_in(lambda: _c1h_dt(Host(engine)), "Africa/Kinshasa")


def test_unknown_zone_is_refused(tmp_path: Path) -> None:
    for bad in ("Africa/Atlantis", "", "../../etc/passwd"):
        try:
            FiscalState.new(time_zone=bad)
        except StateError as exc:
            assert "IANA zone" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")
    path = tmp_path / "m.json"
    MCFEngine(path)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "time_zone": "Mars/Olympus"}))
    try:
        FiscalStore(path).load()
    except StateError as exc:
        assert "Mars/Olympus" in str(exc)
    else:
        raise AssertionError("a fiscal memory with an unknown zone loaded")


def test_cli_set_clock_time_zone_and_status(tmp_path: Path) -> None:
    state = tmp_path / "m.json"
    MCFEngine(state)
    runner = CliRunner()
    moved = runner.invoke(sim, ["set-clock", "--state", str(state), "--time-zone", "Africa/Lubumbashi"])
    assert moved.exit_code == 0, moved.output
    assert "(Africa/Lubumbashi)" in moved.output
    assert "(Africa/Lubumbashi)" in runner.invoke(sim, ["status", "--state", str(state)]).output
    _assert_is_now_in(lambda: _c1h_dt(Host(MCFEngine(state))), "Africa/Lubumbashi")
    bad = runner.invoke(sim, ["set-clock", "--state", str(state), "--time-zone", "Africa/Atlantis"])
    assert bad.exit_code == 2 and "IANA zone" in bad.output
    assert bad.exception is None or isinstance(bad.exception, SystemExit)
    assert dataclasses.asdict(FiscalStore(state).load())["time_zone"] == "Africa/Lubumbashi"
    bad_run = runner.invoke(sim, ["run", "--state", str(state), "--time-zone", "Nowhere"])
    assert bad_run.exit_code == 2 and "IANA zone" in bad_run.output


def _read_frame(port: serial.SerialBase) -> bytes:
    deframer = Deframer(expect="response")
    deadline = time.monotonic() + 3  # a guard against hanging, not a timing assertion
    while time.monotonic() < deadline:
        for event in deframer.feed(port.read(port.in_waiting or 1)):
            if event[0] == "frame":
                return event[1]
    raise AssertionError("no answer")


def test_cli_run_time_zone_provisions_the_device(tmp_path: Path) -> None:
    state = tmp_path / "m.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", "--state", str(state), "--tcp", "127.0.0.1:0",
         "--time-zone", "Africa/Lubumbashi"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "(Africa/Lubumbashi)" in lines[0]
        url = next(line.split()[1] for line in lines if line.startswith("tcp:"))
        with serial.serial_for_url(url, timeout=0.2) as port:

            def read_dt() -> str:
                port.write(encode_command(0x21, 0xC1, b""))
                return decode_response(_read_frame(port)).data.decode().split(",")[2]

            _assert_is_now_in(read_dt, "Africa/Lubumbashi")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert FiscalStore(state).load().time_zone == "Africa/Lubumbashi"
