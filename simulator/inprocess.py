"""The driver's ``Transport`` straight onto an engine: no pty, no socket, no thread.

What the engine emits is queued with the time it leaves the device, so SYN every 100 ms,
delays and wire timing are real (wall-clock) even in process. Importing this module registers
the ``sim`` scheme: ``open_transport("sim:///tmp/mcf.json")`` reaches the in-process device kept
for that fiscal memory file (created on first use), the same one each time within a process,
as reopening a port reaches the same physical device.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from drivers.usb_fiscal_memory.errors import DeviceNotFound, LinkClosed
from drivers.usb_fiscal_memory.transport import Transport, register_scheme

from .device import DeviceOptions
from .engine import MCFEngine

_IDLE_STEP = 0.01  # how finely a waiting read wakes up to see new or due bytes


class InProcessTransport(Transport):
    def __init__(self, engine: MCFEngine, *, spy: TextIO | None = None) -> None:
        super().__init__(spy=spy)
        self.engine = engine
        self._queue: list[tuple[float, bytes]] = []  # (monotonic time it is readable, bytes)
        self._buffer = bytearray()
        self._lock = threading.Lock()

    def _open(self) -> None:
        if self.engine.faults.is_unplugged():
            raise DeviceNotFound("simulated MCF is unplugged")

    def _close(self) -> None:
        with self._lock:
            self._queue.clear()
            self._buffer.clear()

    def _check_plugged(self) -> None:
        if self.engine.faults.is_unplugged():
            with self._lock:
                self._queue.clear()
                self._buffer.clear()
            raise LinkClosed("simulated MCF unplugged")

    def _write(self, data: bytes) -> None:
        self._check_plugged()
        now = time.monotonic()
        emissions = self.engine.respond(data)
        with self._lock:
            self._queue += [(now + e.at, e.data) for e in emissions]

    def _collect(self) -> float | None:
        """Move due bytes to the buffer; when the next queued bytes are due (None: none)."""
        now = time.monotonic()
        with self._lock:
            due = [item for item in self._queue if item[0] <= now]
            self._queue = [item for item in self._queue if item[0] > now]
            for _, data in due:
                self._buffer += data
            return min((at for at, _ in self._queue), default=None)

    def _read(self, max_bytes: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            self._check_plugged()
            for emission in self.engine.poll():
                with self._lock:
                    self._queue.append((time.monotonic() + emission.at, emission.data))
            next_due = self._collect()
            with self._lock:
                if self._buffer:
                    out = bytes(self._buffer[:max_bytes])
                    del self._buffer[:max_bytes]
                    return out
            now = time.monotonic()
            if now >= deadline:
                return b""
            wake = min(deadline, next_due if next_due is not None else deadline, now + _IDLE_STEP)
            time.sleep(max(0.0, wake - now))

    def _reset_input(self) -> None:
        self._collect()
        with self._lock:
            self._buffer.clear()


# ------------------------------------------------------------------------------- sim:// URLs
# Kept for the life of the process, like a device that stays plugged in.
_engines: dict[str, MCFEngine] = {}
_engines_lock = threading.Lock()


def engine_for(
    state_path: str | os.PathLike[str], options: DeviceOptions | None = None
) -> MCFEngine:
    """The in-process device for this fiscal memory file (one per file per process)."""
    key = str(Path(state_path).resolve())
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = MCFEngine(key, options=options)
            _engines[key] = engine
        return engine


def attach(engine: MCFEngine) -> str:
    """Make ``sim://`` URLs for this engine's state file reach ``engine``; returns the URL."""
    key = str(engine.store.path.resolve())
    with _engines_lock:
        _engines[key] = engine
    return f"sim://{key}"


def open_sim_url(url: str, *, spy: TextIO | None = None, **_: object) -> InProcessTransport:
    """``sim:///path/state.json[?wire_timing=1]``."""
    parts = urlsplit(url)
    path = parts.netloc + parts.path if parts.netloc else parts.path
    if not path:
        raise DeviceNotFound(f"{url!r}: a sim:// URL names a fiscal memory file")
    query = parse_qs(parts.query)
    wire = query.get("wire_timing", ["0"])[0] in ("1", "true", "yes")
    return InProcessTransport(engine_for(path, DeviceOptions(wire_timing=wire)), spy=spy)


register_scheme("sim", open_sim_url)
