"""Byte pipes to an MCF, selected by URL like pyserial ports.

``open_transport("/dev/ttyACM0")``, ``open_transport("socket://10.0.0.5:4001")``,
``open_transport("usb:1209:0001")``; other packages add schemes with ``register_scheme``
(the simulator declares ``sim://`` as a ``stalela.transports`` entry point). Every transport can carry a ``spy`` stream that receives a
hex dump of each byte written and read, so a technician can watch the wire without code changes.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from types import TracebackType
from typing import Callable, Protocol, TextIO

from .errors import DeviceNotFound


class Transport(ABC):
    """A sync byte pipe. Opens lazily on first use; closing twice is harmless."""

    def __init__(self, *, spy: TextIO | None = None) -> None:
        self._spy = spy
        self._is_open = False
        self._spy_t0 = time.monotonic()

    # -- public API -------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        if not self._is_open:
            self._open()
            self._is_open = True

    def close(self) -> None:
        if self._is_open:
            self._is_open = False
            self._close()

    def write(self, data: bytes) -> None:
        self.open()
        self._dump("TX", data)
        self._write(bytes(data))

    def read(self, max_bytes: int, timeout: float) -> bytes:
        """Return 1..max_bytes bytes as soon as some arrive, or b"" after ``timeout`` seconds."""
        self.open()
        data = self._read(max_bytes, max(0.0, timeout))
        if data:
            self._dump("RX", data)
        return data

    def reset_input(self) -> None:
        """Drop whatever the device sent that nobody read yet."""
        if self._is_open:
            self._reset_input()

    def __enter__(self) -> "Transport":
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- to implement -----------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _read(self, max_bytes: int, timeout: float) -> bytes: ...

    def _reset_input(self) -> None:
        # Generic fallback: drain without waiting.
        while self._read(4096, 0.0):
            pass

    # -- spy --------------------------------------------------------------------------------
    def _dump(self, direction: str, data: bytes) -> None:
        if self._spy is None:
            return
        elapsed = time.monotonic() - self._spy_t0
        for line in hexdump_lines(data):
            self._spy.write(f"{elapsed:10.3f} {direction} {line}\n")
        self._spy.flush()


def hexdump_lines(data: bytes, width: int = 16) -> list[str]:
    """Classic offset / hex / ASCII lines (control bytes shown as '.')."""
    lines = []
    for offset in range(0, len(data), width):
        chunk = data[offset : offset + width]
        hex_part = " ".join(f"{b:02X}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset:04X}  {hex_part:<{width * 3 - 1}}  {text}")
    return lines


# ------------------------------------------------------------------------- scheme registry
class TransportFactory(Protocol):
    def __call__(self, url: str, **kw: object) -> Transport: ...


_SCHEMES: dict[str, Callable[..., Transport]] = {}
ENTRY_POINT_GROUP = "stalela.transports"


def register_scheme(name: str, factory: Callable[..., Transport]) -> None:
    """Make ``open_transport("{name}:...")`` call ``factory(url, **kw)``."""
    _SCHEMES[name.lower()] = factory


def registered_schemes() -> list[str]:
    return sorted(_SCHEMES)


def _plugin_scheme(scheme: str) -> Callable[..., Transport] | None:
    """A scheme that an installed package declares in the ``stalela.transports`` entry-point group
    (the bundled simulator declares ``sim``). Loaded on first use, so the driver never imports
    the packages that extend it, and a configuration naming ``sim:///path/state.json`` works
    without anyone importing the simulator first."""
    for entry in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        factory = entry.load()
        register_scheme(scheme, factory)
        return factory
    return None


def _scheme_of(url: str) -> str | None:
    if "://" in url:
        return url.split("://", 1)[0].lower()
    if url.lower().startswith("usb:"):
        return "usb"
    return None


def open_transport(url: str, **kw: object) -> Transport:
    """Transport for a port path or URL (not yet opened; it opens on first use or ``with``)."""
    from . import transport_serial, transport_usb  # noqa: F401  (register built-in schemes)

    scheme = _scheme_of(url)
    if scheme is None:
        return transport_serial.SerialTransport(url, **kw)  # type: ignore[arg-type]
    factory = _SCHEMES.get(scheme) or _plugin_scheme(scheme)
    if factory is None:
        raise DeviceNotFound(
            f"unknown port scheme {scheme!r} in {url!r}; known: {', '.join(registered_schemes())}"
        )
    return factory(url, **kw)
