"""The daemon logs each change of the outlet's health once: `blocked` at error level, the way
back as info — never one line per check."""
from __future__ import annotations

import json
import time
from datetime import timedelta

from tests.support import invoice


def _changes(harness) -> list[dict]:
    lines = [json.loads(line) for line in harness.read_log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "health.changed"]


def _wait_for(harness, predicate, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        changes = _changes(harness)
        if predicate(changes):
            return changes
        time.sleep(0.1)
    raise AssertionError(f"no such health change in the log: {_changes(harness)}")


def test_blocked_and_back_are_logged_once_each(harness):
    harness.add_credential(harness.credential(1, 100, valid_for=timedelta(minutes=1, seconds=3)))
    harness.start()
    assert harness.post("/v1/invoices", invoice("H1"))[0] == 201
    changes = _wait_for(harness, lambda c: any(x["state"] == "red" for x in c))
    red = [x for x in changes if x["state"] == "red"]
    assert len(red) == 1 and red[0]["level"] == "error" and red[0]["status"] == "blocked"
    assert red[0]["from_state"] in ("green", "blue", "amber") and "reason" in red[0]
    time.sleep(2.5)  # still blocked: checked every second, logged once
    assert len([x for x in _changes(harness) if x["state"] == "red"]) == 1
    harness.add_credential(harness.credential(101, 200))
    back = _wait_for(harness, lambda c: c[-1]["state"] != "red")[-1]
    assert back["from_state"] == "red" and back["status"] == "ok" and back["level"] in ("info", "warning")
    assert "stk_" not in harness.read_log()  # no API key in the log
