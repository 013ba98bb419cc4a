"""pyserial transport: RS-232, USB virtual COM ports (CDC-ACM, usb-serial) and pyserial URLs."""
from __future__ import annotations

import errno
import os
from typing import TextIO

import serial

from .errors import DeviceNotFound, LinkClosed, PermissionDenied, PortBusy
from .transport import Transport, register_scheme

BAUDRATE = 115200  # §3: 115200 b/s, 8, N, 1

# URL schemes pyserial itself understands; anything else with "://" is someone else's.
PYSERIAL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "hwgrep", "alt")


class SerialTransport(Transport):
    """A tty path or a pyserial URL. Paths are opened exclusively so two agents never share one."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = BAUDRATE,
        exclusive: bool = True,
        spy: TextIO | None = None,
    ) -> None:
        super().__init__(spy=spy)
        self.port = port
        self._baudrate = baudrate
        self._exclusive = exclusive
        self._ser: serial.Serial | None = None
        self._timeout: float | None = None

    def __repr__(self) -> str:
        return f"SerialTransport({self.port!r})"

    def _open(self) -> None:
        options: dict[str, object] = {
            "baudrate": self._baudrate,
            "bytesize": serial.EIGHTBITS,
            "parity": serial.PARITY_NONE,
            "stopbits": serial.STOPBITS_ONE,
            "timeout": 0,
        }
        if "://" not in self.port and self._exclusive:
            options["exclusive"] = True
        try:
            self._ser = serial.serial_for_url(self.port, **options)
        except serial.SerialException as exc:
            raise _classify(self.port, exc) from exc
        except ValueError as exc:  # bad URL or unsupported setting
            raise DeviceNotFound(f"cannot open {self.port}: {exc}") from exc
        self._timeout = 0

    def _close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError):
                pass  # unplugged already: nothing left to release

    def _port(self) -> serial.Serial:
        if self._ser is None:
            raise LinkClosed(f"{self.port} is closed")
        return self._ser

    def _write(self, data: bytes) -> None:
        ser = self._port()
        try:
            ser.write(data)
            ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(f"write to {self.port} failed: {exc}") from exc

    def _read(self, max_bytes: int, timeout: float) -> bytes:
        ser = self._port()
        try:
            # Changing the timeout reconfigures the tty (tcsetattr), so only when it changes.
            if self._timeout != timeout:
                ser.timeout = timeout
                self._timeout = timeout
            first = ser.read(1)
            if not first or max_bytes <= 1:
                return bytes(first)
            waiting = min(ser.in_waiting, max_bytes - 1)
            return bytes(first) + (bytes(ser.read(waiting)) if waiting else b"")
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(f"read from {self.port} failed: {exc}") from exc

    def _reset_input(self) -> None:
        try:
            self._port().reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(f"{self.port}: {exc}") from exc


def _classify(port: str, exc: serial.SerialException) -> Exception:
    """Turn pyserial's one exception type into the fault a technician can act on."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or (
        "://" not in port and not os.path.exists(port)
    ):
        return DeviceNotFound(f"no such port {port}")
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"no permission to open {port}")
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text:
        return PortBusy(f"{port} is in use by another process")
    return DeviceNotFound(f"cannot open {port}: {text}")


def _factory(url: str, **kw: object) -> Transport:
    return SerialTransport(url, **kw)  # type: ignore[arg-type]


for _scheme in PYSERIAL_SCHEMES:
    register_scheme(_scheme, _factory)
