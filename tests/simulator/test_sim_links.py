"""Raw frames over a real pseudo-terminal and a real TCP socket, through pyserial."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
import serial

from drivers.usb_fiscal_memory.framing import Deframer, decode_response, encode_command
from simulator.engine import MCFEngine
from simulator.pty_link import PtyLink
from simulator.tcp_link import TcpLink


def _read_frame(port: serial.SerialBase, timeout: float = 2.0) -> bytes:
    deframer = Deframer(expect="response")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in deframer.feed(port.read(port.in_waiting or 1)):
            if event[0] == "frame":
                return event[1]
    raise AssertionError("no frame within the timeout")


@pytest.fixture
def pty_link(engine: MCFEngine, tmp_path: Path) -> Iterator[PtyLink]:
    link = PtyLink(engine, tmp_path / "ttyMCF")
    link.start()
    yield link
    link.stop()


def test_pty_raw_frames_in_correct_frames_out(pty_link: PtyLink, tmp_path: Path) -> None:
    assert pty_link.slave_path is not None and pty_link.slave_path.startswith("/dev/pts/")
    assert (tmp_path / "ttyMCF").resolve() == Path(pty_link.slave_path)
    with serial.Serial(str(tmp_path / "ttyMCF"), 115200, timeout=0.2) as port:
        port.write(encode_command(0x21, 0xC1, b""))
        response = decode_response(_read_frame(port))
        assert (response.seq, response.cmd) == (0x21, 0xC1)
        assert response.data.startswith(b"SIM0000001-1,A1234567B,")
        # Binary-safe: TAB and LF of 31h pass through the tty untouched.
        port.write(encode_command(0x22, 0xC3, b""))
        _read_frame(port)
        port.write(encode_command(0x23, 0xC0, b"1,Jan,A1234567B,FV,TTC,SFE1,F1"))
        _read_frame(port)
        port.write(encode_command(0x24, 0x31, "EAU\nCODE1\tBIE,A0.00%380\t380".encode()))
        assert decode_response(_read_frame(port)).data == b"380.00,380.00,0.00,0.00"


def test_pty_unplug_and_replug(pty_link: PtyLink, engine: MCFEngine, tmp_path: Path) -> None:
    path = str(tmp_path / "ttyMCF")
    port = serial.Serial(path, 115200, timeout=0.2)
    try:
        port.write(encode_command(0x21, 0xC1, b""))
        _read_frame(port)
        engine.faults.unplug()
        deadline = time.monotonic() + 2
        while (tmp_path / "ttyMCF").is_symlink() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not (tmp_path / "ttyMCF").exists()
        with pytest.raises(serial.SerialException):
            port.write(encode_command(0x22, 0xC1, b""))
            port.read(1)
            port.read(1)
    finally:
        port.close()
    engine.faults.replug()
    deadline = time.monotonic() + 2
    while not (tmp_path / "ttyMCF").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    with serial.Serial(path, 115200, timeout=0.2) as port:
        port.write(encode_command(0x23, 0xC1, b""))
        assert decode_response(_read_frame(port)).seq == 0x23


def test_tcp_raw_frames_in_correct_frames_out(engine: MCFEngine) -> None:
    with TcpLink(engine) as link:
        assert link.url.startswith("socket://127.0.0.1:")
        for attempt in range(2):  # a second SFE connects after the first closed
            port = serial.serial_for_url(link.url, timeout=0.2)
            try:
                port.write(encode_command(0x30 + attempt, 0x2B, b"I0"))
                response = decode_response(_read_frame(port))
                assert (response.seq, response.data) == (0x30 + attempt, b"STALELA SIMULATOR SARL")
            finally:
                port.close()


def test_tcp_unplug_closes_the_connection_and_replug_listens_again(engine: MCFEngine) -> None:
    with TcpLink(engine) as link:
        port = serial.serial_for_url(link.url, timeout=0.2)
        try:
            engine.faults.unplug(for_seconds=0.3)
            time.sleep(0.15)
            with pytest.raises(serial.SerialException):
                for _ in range(20):
                    port.write(encode_command(0x21, 0xC1, b""))
                    port.read(1)
        finally:
            port.close()
        time.sleep(0.4)
        with serial.serial_for_url(link.url, timeout=0.2) as port:
            port.write(encode_command(0x22, 0xC1, b""))
            assert decode_response(_read_frame(port)).seq == 0x22
