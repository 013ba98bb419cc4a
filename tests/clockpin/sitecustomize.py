"""Test-owned: the clock of every Python process a pinned test starts (tests/conftest.py `_pin`).

Python imports `sitecustomize` at start-up from the first folder on its path that holds one;
`_pin` puts this folder first on PYTHONPATH and the offset from the real time in
STALELA_TEST_CLOCK_OFFSET, so the agent, the cloud, the simulators and their worker processes
start at the pinned hour, ticking from there, as the test process does (time-machine: the wall
clock only; monotonic clocks, timeouts and sleeps keep real time). Without the variable it does
nothing. Nothing in the product knows of it.

libfaketime did this before, and cannot with Python 3.11: with a real monotonic clock
`time.sleep` fails with EINVAL, with a faked one waits with a timeout never end.
"""
import os

_offset = os.environ.get("STALELA_TEST_CLOCK_OFFSET")
if _offset:
    from datetime import datetime, timedelta, timezone

    import time

    import time_machine

    time_machine.travel(datetime.now(timezone.utc) + timedelta(seconds=float(_offset)), tick=True).start()
    # time-machine's clock ticks from its first read, not from start(): read it now, or the
    # process's clock would lag the pinned one by whatever its imports take before it first
    # asks the time (≈ 1 s for a simulator started on a busy machine).
    time.time()
