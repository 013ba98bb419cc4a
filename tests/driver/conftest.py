"""Fixtures for the driver's unit tests (no simulator needed)."""
from __future__ import annotations

from typing import Iterator

import pytest

from drivers.usb_fiscal_memory.transport import Transport

_opened: list[Transport] = []


@pytest.fixture(autouse=True)
def _close_transports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that leaves a real transport open (pymodbus's trick), after closing it."""
    original = Transport.open

    def tracking_open(self: Transport) -> None:
        original(self)
        if self not in _opened:
            _opened.append(self)

    monkeypatch.setattr(Transport, "open", tracking_open)
    yield
    leaked = [t for t in _opened if t.is_open and type(t).__name__ != "DummyTransport"]
    for t in _opened:
        t.close()
    _opened.clear()
    assert not leaked, f"test left transports open: {leaked}"
