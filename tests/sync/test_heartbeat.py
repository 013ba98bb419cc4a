"""An agent with no sales is still heard from: it sends the cloud a heartbeat at start and every
`sync.heartbeat_interval`, so the outlet's "last seen" (dashboard, the silent-outlet alert's
gauge) tells a box that is on from one that is off."""
from __future__ import annotations

import sqlite3
import time
import urllib.request
from datetime import datetime

import pytest

from tests.support import CloudProcess, EnrolledAgent


def _heartbeats(cloud: CloudProcess) -> list[str | None]:
    conn = sqlite3.connect(f"file:{cloud.data_dir / 'cloud.sqlite3'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT last_heartbeat_at FROM agents")]
    finally:
        conn.close()


def _last_seen(cloud: CloudProcess, outlet: str) -> float:
    with urllib.request.urlopen(cloud.url + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("stalela_cloud_outlet_last_seen_timestamp_seconds{") and f'outlet="{outlet}"' in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no last-seen series for {outlet}")


def test_an_idle_agent_sends_heartbeats_that_move_its_outlets_last_seen(tmp_path, cloud):
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet())
    assert _heartbeats(cloud) == [None]  # enrolled, never started
    before = _last_seen(cloud, agent.outlet)  # its enrollment's credential
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while _heartbeats(cloud) == [None]:
            assert time.monotonic() < deadline, "no heartbeat reached the cloud"
            time.sleep(0.2)
        beat = datetime.fromisoformat(_heartbeats(cloud)[0]).timestamp()
        assert beat > before
        assert _last_seen(cloud, agent.outlet) == pytest.approx(beat, abs=1)
        assert agent.numbers() == []  # no sale: the heartbeat alone moved it
    finally:
        agent.stop()
