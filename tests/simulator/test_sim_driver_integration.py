"""The driver's MCFClient sealing whole invoices through the simulator, faults included.

For each switchboard fault the driver either recovers or fails with a clear error, and the
device never normalizes an invoice twice (TC moves by exactly one per invoice).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from drivers.usb_fiscal_memory.client import MCFClient
from drivers.usb_fiscal_memory.errors import DeviceError, MCFLinkError
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport import open_transport
from simulator.engine import MCFEngine
from simulator.pty_link import PtyLink

from sim_helpers import dgi_example


@pytest.fixture
def pty(engine: MCFEngine, tmp_path: Path) -> Iterator[str]:
    link = PtyLink(engine, tmp_path / "ttyMCF")
    link.start()
    yield link.path
    link.stop()


def client_on(path: str, on_step: Callable[[str], None] | None = None) -> MCFClient:
    return MCFClient(Link(open_transport(path), timeout=0.5, retries=3), on_step=on_step)


def test_whole_invoice_over_the_pty(pty: str, engine: MCFEngine) -> None:
    steps: list[str] = []
    client = client_on(pty, steps.append)
    try:
        sealed = client.seal_invoice(dgi_example())
    finally:
        client.link.close()
    assert steps[:4] == ["status", "client", "open", "item:1"]
    assert {"comment:A", "subtotal", "payment:1", "payment:2", "normalized"} <= set(steps)
    assert (sealed.fc, sealed.tc, sealed.ft, sealed.fn, sealed.mid) == (1, 1, "FV", "345/2024", "SIM0000001-1")
    entry = list(engine.store.entries(engine.state))[-1]
    assert (entry.sig, entry.mv, entry.mt) == (sealed.sig, "4064.00", "64.00")
    assert entry.payments == [["M", "4000.00"], ["E", "64.00"]]


def _seal_with(engine: MCFEngine, pty: str, arm: Callable[[str], None]) -> object:
    client = client_on(pty, arm)
    try:
        return client.seal_invoice(dgi_example())
    finally:
        client.link.close()


def _on(step: str, action: Callable[[], None]) -> Callable[[str], None]:
    def hook(current: str) -> None:
        if current == step:
            action()
    return hook


@pytest.mark.parametrize(
    "fault, value, step",
    [
        ("nak", 2, "normalizing"),
        ("corrupt_bcc", 1, "normalizing"),
        ("drop", 1, "normalizing"),
        ("silence", 1, "normalizing"),
        ("syn_ms", 900, "normalizing"),
        ("garbage", 40, "open"),
        ("nak", 1, "item:1"),
        ("drop", 1, "item:2"),
    ],
)
def test_driver_recovers_from_line_faults(
    pty: str, engine: MCFEngine, fault: str, value: int, step: str
) -> None:
    clear_after = 1 if fault in ("syn_ms", "garbage") else None
    sealed = _seal_with(engine, pty, _on(step, lambda: engine.faults.set(fault, value, clear_after)))
    assert engine.state.tc == 1
    assert engine.state.last_invoice is not None
    assert engine.state.last_invoice.sig == getattr(sealed, "sig")
    assert engine.faults.active() == {}  # the fault really fired


def test_power_loss_after_normalize_then_recovery_from_c1h(pty: str, engine: MCFEngine) -> None:
    # The driver's same-SEQ resend meets a rebooted MCF (E:AUCUNE FACTURE OUVERTE); it then
    # reads C1h and returns the normalized invoice instead of an error.
    sealed = _seal_with(engine, pty, _on("normalizing", lambda: engine.faults.set("power_loss", 1)))
    assert engine.state.tc == 1  # normalized once, the answer was lost
    assert getattr(sealed, "sig") == engine.state.last_invoice.sig  # type: ignore[union-attr]
    assert getattr(sealed, "fc_exact") is True  # FC from the C0h answer, not from FVC
    client = client_on(pty)
    try:
        recovered = client.recover_last("345/2024")
        again = client.seal_invoice(dgi_example())  # the SFE retries: nothing sealed twice
    finally:
        client.link.close()
    assert recovered is not None and recovered.sig == engine.state.last_invoice.sig  # type: ignore[union-attr]
    assert again.sig == recovered.sig
    assert engine.state.tc == 1


def test_unplug_after_normalize_fails_clearly_then_recovers(pty: str, engine: MCFEngine, tmp_path: Path) -> None:
    link_path = tmp_path / "ttyMCF"

    def unplug_right_after_38h() -> None:
        engine.faults.set("drop", 1)  # the 38h answer is lost...
        # ...and the cable goes while the SFE waits for it.
        threading.Timer(0.15, engine.faults.unplug, kwargs={"for_seconds": 1.0}).start()

    with pytest.raises(MCFLinkError):
        _seal_with(engine, pty, _on("normalizing", unplug_right_after_38h))
    assert engine.state.tc == 1
    deadline = time.monotonic() + 3
    while not link_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sealed = _seal_with(engine, pty, lambda step: None)
    assert engine.state.tc == 1
    assert getattr(sealed, "sig") == engine.state.last_invoice.sig  # type: ignore[union-attr]


def test_unplug_before_normalize_then_a_clean_retry(pty: str, engine: MCFEngine, tmp_path: Path) -> None:
    def unplug_now() -> None:
        engine.faults.unplug(for_seconds=0.6)
        deadline = time.monotonic() + 2
        while (tmp_path / "ttyMCF").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    with pytest.raises(MCFLinkError):
        _seal_with(engine, pty, _on("subtotal", unplug_now))
    deadline = time.monotonic() + 3
    while not (tmp_path / "ttyMCF").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _seal_with(engine, pty, lambda step: None)  # the stale open invoice is cancelled first
    assert engine.state.tc == 1


@pytest.mark.parametrize("flag", ["memory_full", "clock_not_set", "daily_report_required"])
def test_device_not_ready_is_reported_before_anything_is_sent(pty: str, engine: MCFEngine, flag: str) -> None:
    engine.faults.set(flag, True)
    with pytest.raises(DeviceError):
        _seal_with(engine, pty, lambda step: None)
    assert engine.state.tc == 0


def test_sim_url_in_process_transport(engine: MCFEngine) -> None:
    from simulator.inprocess import attach

    url = attach(engine)
    client = MCFClient(Link(open_transport(url), timeout=0.5))
    try:
        engine.faults.set("syn_ms", 300, clear_after=1)
        status = client.status()
        sealed = client.seal_invoice(dgi_example("INPROC-1"))
    finally:
        client.link.close()
    assert status.mid == "SIM0000001-1"
    assert sealed.tc == 1 and engine.state.last_invoice.fn == "INPROC-1"  # type: ignore[union-attr]


def test_sim_url_reaches_the_same_device_each_time(tmp_path: Path) -> None:
    import simulator.inprocess  # noqa: F401  (registers sim://)

    url = f"sim://{tmp_path / 'url.json'}"
    first = MCFClient(Link(open_transport(url), timeout=0.5))
    first.seal_invoice(dgi_example("URL-1"))
    first.link.close()
    second = MCFClient(Link(open_transport(url), timeout=0.5))
    try:
        assert second.status().tc == 1
    finally:
        second.link.close()
