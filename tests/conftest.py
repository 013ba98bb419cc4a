"""Shared fixtures: real data folders, real agent processes on 127.0.0.1, real credentials.

The cloud's issuer role is played here by a test issuer key that signs real credentials with
the same code the cloud uses (`DelegatedCredential.issue`), so agent tests do not need a cloud
process; the end-to-end tests start the real cloud.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import time_machine
from hypothesis import HealthCheck, settings

from tests.support import AgentHarness, CloudProcess

# Property tests check what is true, never how fast: a per-example deadline only measures how busy
# this shared 2-core machine is (a deframer example took 270 ms under load, 0.3 ms after).
settings.register_profile("stalela", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("stalela")

# The hours at which a date changes somewhere it matters: 23:30 UTC is already tomorrow in
# Kinshasa (UTC+1), 00:30 UTC is today in UTC but the day after a UTC "yesterday".
CLOCK_EDGES = ("23:30", "00:30")


def pytest_configure(config):
    config.addinivalue_line("markers", "clock_edges: run the test with the clock pinned at 23:30 and at 00:30 "
                                       "UTC (this process and those it starts, by time-machine)")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("clock_edges"):
        metafunc.parametrize("pinned_utc", CLOCK_EDGES, indirect=True)


# tests/clockpin/sitecustomize.py pins the processes the tests start (see there why not libfaketime).
CLOCKPIN = Path(__file__).resolve().parent / "clockpin"


def _pin(hour: int, minute: int):
    """Today at hour:minute UTC, ticking from there: this process by time-machine, every Python
    process it starts by tests/clockpin/sitecustomize.py (first on the PYTHONPATH they inherit;
    tests.support.python_path keeps it there), also with time-machine."""
    # The real time even inside another pin (a clock_edges test in a whole run `--at`): the
    # subprocesses' offset is counted from it.
    hatch = time_machine.escape_hatch
    real = datetime.fromtimestamp(hatch.time.time() if hatch.is_travelling() else time.time(), timezone.utc)
    target = real.replace(hour=hour, minute=minute, second=0, microsecond=0)
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "STALELA_TEST_CLOCK_OFFSET")}
    inherited = [p for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p and p != str(CLOCKPIN)]
    try:
        with time_machine.travel(target, tick=True):
            # time-machine ticks from the clock's first read, not from the travel's start: read
            # it now, then give the subprocesses this process's offset from the real time as it
            # is (read back to back), so that their clocks and this one agree to the millisecond.
            offset = time.time() - hatch.time.time()
            os.environ.update(PYTHONPATH=os.pathsep.join([str(CLOCKPIN), *inherited]),
                              STALELA_TEST_CLOCK_OFFSET=f"{offset:.6f}")
            yield target
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def whole_run_at():
    """`./dev test --at HH:MM` (STALELA_TEST_AT): the whole run at today's HH:MM UTC, as the
    clock_edges tests are (each xdist worker pins its own session)."""
    at = os.environ.get("STALELA_TEST_AT")
    if not at:
        yield None
        return
    try:
        hour, minute = map(int, at.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"STALELA_TEST_AT={at!r}: give the UTC time as HH:MM") from None
    yield from _pin(hour, minute)


@pytest.fixture(autouse=True)
def pinned_utc(request):
    """For a test marked `clock_edges`: today at the given UTC hour, ticking from there, for this
    process and every Python process it starts (time-machine; tests/clockpin: a seam the tests
    own, nothing in our code knows of it). Autouse,
    so it is set up before the test's other fixtures (a cloud's clock, an agent's credentials
    are made at that hour)."""
    if not hasattr(request, "param"):
        yield None
        return
    hour, minute = map(int, request.param.split(":"))
    yield from _pin(hour, minute)


@pytest.fixture
def harness(tmp_path):
    h = AgentHarness(tmp_path / "agent")
    yield h
    h.stop()


@pytest.fixture
def cloud(tmp_path):
    """The bundled cloud as a real `stalela cloud serve` process on a SQLite file, stopped after
    the test. (tests/cloud/ has its own `cloud`: an in-process service on either backend.)"""
    c = CloudProcess(tmp_path / "cloud")
    c.start()
    yield c
    c.stop()
