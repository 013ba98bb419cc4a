"""The seam the date-sensitive tests stand on: under a pin (tests/conftest.py `_pin`), a Python
process the test starts sees the pinned hour too, and still sleeps and waits in real time (what
libfaketime broke). If the pin stopped reaching subprocesses, every clock_edges test of an agent
or cloud process would pass at the real hour without proving anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from tests.support import python_path

CHILD = """
import json, threading, time
from datetime import datetime, timezone
start = time.monotonic()
time.sleep(0.05)
threading.Event().wait(0.05)
print(json.dumps({"now": datetime.now(timezone.utc).isoformat(), "epoch": time.time(),
                  "waited": time.monotonic() - start}))
"""


@pytest.mark.clock_edges
def test_a_started_process_sees_the_pinned_hour_and_still_sleeps(pinned_utc):
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=python_path()))
    assert res.returncode == 0, res.stderr
    child = json.loads(res.stdout)
    seen = datetime.fromisoformat(child["now"])
    assert abs((seen - pinned_utc).total_seconds()) < 120, (seen, pinned_utc)
    assert abs(child["epoch"] - seen.timestamp()) < 5
    assert 0.1 <= child["waited"] < 30  # real sleeps and waits, neither failing nor hanging
    # ...and this process sees the same hour.
    assert abs((datetime.now(timezone.utc) - pinned_utc).total_seconds()) < 120


LATE_READER = """
import sys, time
time.sleep(1.0)  # what a program's imports take before it first asks the time
print("ready", flush=True)
sys.stdin.readline()
print(repr(time.time()), flush=True)  # its first reading of the clock
"""


@pytest.mark.clock_edges
def test_a_process_that_reads_the_time_late_still_agrees_with_this_one(pinned_utc):
    # time-machine's clock ticks from its first read: a child that first read the time a second
    # after start-up ran a second behind this process (a simulated device's clock, checked
    # against this process's to the second, failed on a busy machine). Bracketed as that check
    # is: the child's reading lies between this process's readings just before and after it.
    child = subprocess.Popen([sys.executable, "-c", LATE_READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=python_path()))
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        before = datetime.now(timezone.utc).timestamp()
        child.stdin.write("now?\n")
        child.stdin.flush()
        seen = float(child.stdout.readline())
        after = datetime.now(timezone.utc).timestamp()
    finally:
        child.kill()
        child.wait(timeout=30)
    # The two clocks agree to tens of microseconds (each starts a few statements after its offset
    # is read): 5 ms of slack, against the whole second by which the late reader was behind.
    assert before - 0.005 <= seen <= after + 0.005, (before, seen, after)
