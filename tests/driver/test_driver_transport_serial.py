"""The pyserial transport on a real pseudo-terminal, plus URL handling and error mapping."""
from __future__ import annotations

import io
import os
import select
import threading
from decimal import Decimal as D

import pytest

from drivers.usb_fiscal_memory.client import MCFClient
from drivers.usb_fiscal_memory.errors import DeviceNotFound, PermissionDenied, PortBusy
from drivers.usb_fiscal_memory.framing import Deframer, Status, decode_command, encode_response
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport import open_transport, register_scheme
from drivers.usb_fiscal_memory.transport_serial import SerialTransport

RATES = ",".join(["0.00", "16.00"] + ["0.00"] * 14)
C1H = f"MID-1,A1234567B,20250301100320,1,1,0,20250301100305,FV,SIG,FN1,10.00,{RATES}".encode()


class PtyResponder:
    """Master side of a pty: answers C1h, NAKs the first frame to exercise a resend."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._naked = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deframer = Deframer("command")
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 1024)
            except OSError:
                return
            for event in deframer.feed(chunk):
                if event[0] != "frame":
                    continue
                self.received.append(event[1])
                if not self._naked:
                    self._naked = True
                    os.write(self.master, b"\x15")
                    continue
                cmd = decode_command(event[1])
                data = C1H if cmd.cmd == 0xC1 else b"R0"
                os.write(self.master, encode_response(cmd.seq, cmd.cmd, data, Status().to_bytes()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_device():
    device = PtyResponder()
    yield device
    device.close()


def test_serial_transport_over_a_real_pty(pty_device):
    spy = io.StringIO()
    with open_transport(pty_device.path, spy=spy) as transport:
        assert isinstance(transport, SerialTransport)
        client = MCFClient(Link(transport, sync=False, first_seq=0x40))
        status = client.status()
        assert status.mid == "MID-1" and status.rates["B"] == D("16.00")
        assert client.pay("E", D("10")).mp == 0
    # NAK on the first frame -> the identical frame (same SEQ 40h) came again.
    assert pty_device.received[0] == pty_device.received[1]
    assert decode_command(pty_device.received[2]).seq == 0x41
    dump = spy.getvalue()
    assert " TX 0000  01 24 40 C1 05" in dump and " RX " in dump


def test_second_open_of_same_tty_is_port_busy(pty_device):
    with SerialTransport(pty_device.path) as first:
        assert first.is_open
        with pytest.raises(PortBusy):
            SerialTransport(pty_device.path).open()


def test_missing_device_is_device_not_found():
    with pytest.raises(DeviceNotFound):
        SerialTransport("/dev/ttyDOESNOTEXIST9").open()


def test_permission_denied_names_the_fix(tmp_path, monkeypatch):
    import errno

    import serial

    def refuse(*args, **kwargs):
        raise serial.SerialException(errno.EACCES, "could not open port: [Errno 13] Permission denied")

    monkeypatch.setattr(serial, "serial_for_url", refuse)
    node = tmp_path / "ttyACM0"
    node.touch()
    with pytest.raises(PermissionDenied, match="60-stalela-mcf.rules.*dialout"):
        SerialTransport(str(node)).open()


def test_loop_url_and_read_timeout():
    with open_transport("loop://") as t:
        t.write(b"\x01\x02\x03")
        assert t.read(10, 0.5) == b"\x01\x02\x03"
        assert t.read(10, 0.05) == b""


def test_socket_url_without_listener_is_device_not_found():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DeviceNotFound):
        open_transport(f"socket://127.0.0.1:{port}").open()


def test_unknown_scheme_and_registry(monkeypatch):
    with pytest.raises(DeviceNotFound, match="unknown port scheme"):
        open_transport("nosuch://x")
    from drivers.usb_fiscal_memory.transport_dummy import DummyTransport

    made = []
    from drivers.usb_fiscal_memory import transport as transport_mod

    monkeypatch.setattr(transport_mod, "_SCHEMES", dict(transport_mod._SCHEMES))
    register_scheme("testdummy", lambda url, **kw: made.append(url) or DummyTransport())
    assert isinstance(open_transport("testdummy://a"), DummyTransport)
    assert made == ["testdummy://a"]
