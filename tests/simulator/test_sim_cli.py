"""`stalela sim`: the real `run` subprocess, and the offline commands through click."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import serial
from click.testing import CliRunner

from drivers.usb_fiscal_memory.framing import Deframer, decode_response, encode_command
from simulator.cli import sim
from simulator.engine import MCFEngine

from sim_helpers import Host

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _read_frame(port: serial.SerialBase) -> bytes:
    deframer = Deframer(expect="response")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for event in deframer.feed(port.read(port.in_waiting or 1)):
            if event[0] == "frame":
                return event[1]
    raise AssertionError("no answer")


def test_run_as_a_subprocess_serves_a_pty_and_stops_on_sigterm(tmp_path: Path) -> None:
    state, link, control = tmp_path / "mcf.json", tmp_path / "ttyMCF", tmp_path / "mcf.ctl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", "--state", str(state), "--pty", "--link", str(link),
         "--mid", "XX01710090-1", "--fault", "nak=1", "--control", str(control)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(link.exists)
        with serial.Serial(str(link), 115200, timeout=0.2) as port:
            port.write(encode_command(0x21, 0xC1, b""))
            assert port.read(1) == b"\x15"  # the --fault nak=1
            port.write(encode_command(0x21, 0xC1, b""))
            assert decode_response(_read_frame(port)).data.startswith(b"XX01710090-1,")
            # A fault switched at run time through the control file.
            result = CliRunner().invoke(sim, ["fault", "--control", str(control), "nak=1"])
            assert result.exit_code == 0, result.output
            time.sleep(0.5)
            port.write(encode_command(0x22, 0x2B, b"I0"))
            assert port.read(1) == b"\x15"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "pty: /dev/pts/" in out and f"(link {link})" in out and "stopped" in out
    assert "Traceback" not in err
    assert not link.exists()
    assert MCFEngine(state).state.mid == "XX01710090-1"


def test_run_reports_a_hold_and_releases_it_through_the_control_file(tmp_path: Path) -> None:
    state, link, control = tmp_path / "mcf.json", tmp_path / "ttyMCF", tmp_path / "mcf.ctl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", "--state", str(state), "--link", str(link),
         "--mid", "XX01710090-1", "--fault", "hold=2B", "--control", str(control)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        _wait_for(link.exists)
        with serial.Serial(str(link), 115200, timeout=0.5) as port:
            port.write(encode_command(0x21, 0x2B, b"I0"))
            assert port.read(1) == b"\x16"  # SYN: busy on the held 2Bh
            line = proc.stdout.readline()
            while not line.startswith("hold:"):
                line = proc.stdout.readline()
            assert "2Bh (SEQ 21h) received, held before it runs" in line
            result = CliRunner().invoke(sim, ["fault", "--control", str(control), "hold=off"])
            assert result.exit_code == 0, result.output
            assert decode_response(_read_frame(port)).data == b"STALELA SIMULATOR SARL"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_run_on_tcp_prints_the_url(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "run", "--state", str(tmp_path / "m.json"), "--tcp", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        url = next(line.split()[1] for line in lines if line.startswith("tcp:"))
        with serial.serial_for_url(url, timeout=0.2) as port:
            port.write(encode_command(0x21, 0xC1, b""))
            assert decode_response(_read_frame(port)).cmd == 0xC1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_status_shows_counters_last_invoice_and_bits(tmp_path: Path) -> None:
    state = tmp_path / "m.json"
    Host(MCFEngine(state)).sell("FAC05/2025", price="13000")
    result = CliRunner().invoke(sim, ["status", "--state", str(state)])
    assert result.exit_code == 0, result.output
    assert "TC 1  FVC 1  FRC 0" in result.output
    assert "FV FAC05/2025  13000.00" in result.output
    assert "status bits none" in result.output


def test_set_clock_and_daily_report(tmp_path: Path) -> None:
    state = tmp_path / "m.json"
    MCFEngine(state)
    runner = CliRunner()
    assert runner.invoke(sim, ["set-clock", "--state", str(state), "--unset"]).exit_code == 0
    assert "clock not set" in runner.invoke(sim, ["status", "--state", str(state)]).output
    result = runner.invoke(sim, ["set-clock", "--state", str(state), "--at", "2026-03-01 12:25:47"])
    assert result.exit_code == 0 and "2026-03-01 12:25" in result.output
    assert Host(MCFEngine(state)).send(0xC1).text.split(",")[2].startswith("2026030112")
    assert runner.invoke(sim, ["daily-report", "--state", str(state)]).exit_code == 0


def test_errors_are_clean_messages(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(sim, ["status", "--state", str(tmp_path / "none.json")])
    assert missing.exit_code == 1 and "Error: no simulated MCF" in missing.output
    bad_fault = runner.invoke(sim, ["run", "--state", str(tmp_path / "m.json"), "--fault", "boom=1"])
    assert bad_fault.exit_code == 2 and "unknown fault 'boom'" in bad_fault.output
    (tmp_path / "broken.json").write_text("{")
    broken = runner.invoke(sim, ["status", "--state", str(tmp_path / "broken.json")])
    assert broken.exit_code == 1 and "cannot read fiscal memory" in broken.output
    MCFEngine(tmp_path / "m.json")
    other = runner.invoke(sim, ["run", "--state", str(tmp_path / "m.json"), "--mid", "ZZ00000000-1"])
    assert other.exit_code == 1 and "not ZZ00000000-1" in other.output
    bad_clock = runner.invoke(sim, ["set-clock", "--state", str(tmp_path / "m.json"), "--at", "yesterday"])
    assert bad_clock.exit_code == 2
    for result in (missing, bad_fault, broken, other, bad_clock):
        assert result.exception is None or isinstance(result.exception, SystemExit)


def _commands(group: click.Group) -> list[click.Command]:
    return [group] + [group.commands[name] for name in sorted(group.commands)]


@pytest.mark.parametrize("command", _commands(sim), ids=lambda c: c.name)
def test_every_command_is_documented_with_an_example(command: click.Command) -> None:
    assert command.help and "Example:" in command.help
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{command.name} {param.opts} has no help"


def test_faults_lists_every_switch() -> None:
    from simulator.faults import NAMES

    output = CliRunner().invoke(sim, ["faults"]).output
    assert all(name in output for name in NAMES)


def test_stalela_root_cli_has_sim() -> None:
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-c", "from agent.cli.main import cli; cli(['sim', '--help'])"],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0 and "simulated MCF" in result.stdout
