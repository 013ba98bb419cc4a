"""Fixtures for the simulated MCF: an engine on a fresh fiscal memory, and a raw-frame host."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from simulator.device import DeviceOptions
from simulator.engine import MCFEngine
from simulator.faults import FaultSwitchboard
from sim_helpers import Host

@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "mcf.json"


@pytest.fixture
def faults() -> FaultSwitchboard:
    return FaultSwitchboard()


@pytest.fixture
def engine(state_path: Path, faults: FaultSwitchboard) -> MCFEngine:
    return MCFEngine(state_path, options=DeviceOptions(), faults=faults)


@pytest.fixture
def host(engine: MCFEngine) -> Host:
    return Host(engine)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread running or a pty/socket open behind it."""
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    yield
    deadline = time.monotonic() + 2
    while True:
        extra_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        leaked = []
        for fd in _open_fds() - fds_before:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(("/dev/pts", "/dev/ptmx", "socket:")):
                leaked.append(target)
        if not extra_threads and not leaked:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left behind: threads {extra_threads}, fds {leaked}")
        time.sleep(0.05)
