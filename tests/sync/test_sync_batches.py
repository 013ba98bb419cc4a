"""How the sync cuts the outbox into batches, against a real cloud process.

The daemon's loop stops a drain after a batch that was not full (the outbox was caught up when it
was read): what was sealed during that upload goes with the next tick, in a fuller batch, instead
of in many small ones while sales go on. `stalela sync now` (drain to empty) still sends
everything. Nothing sealed is left behind either way.
"""
from __future__ import annotations

import asyncio

from agent.cloud_client import CloudClient
from agent.config import load_config
from agent.sync import SyncWorker
from tests.reports.helpers import seal_in_process, varied_request
from tests.support import EnrolledAgent


class SealsDuringUpload:
    """The real cloud client, with sales made while one chosen upload is on its way (a test-owned
    seam: it seals through the agent's own journal in this process, then uploads for real)."""

    def __init__(self, client: CloudClient, data_dir, on_call: int, extra: int) -> None:
        self.client, self.data_dir, self.on_call, self.extra = client, data_dir, on_call, extra
        self.sizes: list[int] = []

    async def reconcile_raw(self, bodies):
        self.sizes.append(len(bodies))
        if len(self.sizes) == self.on_call:
            first = 1000 + len(self.sizes) * 10
            seal_in_process(self.data_dir, [varied_request(first + k) for k in range(self.extra)])
        return await self.client.reconcile_raw(bodies)


def _agent_with(tmp_path, cloud, sealed: int) -> EnrolledAgent:
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=100)
    seal_in_process(agent.data_dir, [varied_request(i) for i in range(sealed)])
    return agent


def _drain(agent: EnrolledAgent, *, until_empty: bool, on_call: int, extra: int) -> tuple[int, list[int]]:
    config = load_config(agent.data_dir)

    async def go():
        async with CloudClient(config.cloud_url, token=agent.cloud_token, timeout=30) as client:
            seam = SealsDuringUpload(client, agent.data_dir, on_call, extra)
            worker = SyncWorker(config.db_path, seam, batch_size=4)
            try:
                return await worker.drain(until_empty=until_empty), seam.sizes
            finally:
                worker.close()

    return asyncio.run(go())


def test_the_daemons_drain_stops_after_a_partial_batch_and_leaves_the_rest_pending(tmp_path, cloud):
    agent = _agent_with(tmp_path, cloud, 5)
    # 5 pending, batches of 4: [4] then [1], partial; 2 sold while that [1] travels stay pending.
    sent, sizes = _drain(agent, until_empty=False, on_call=2, extra=2)
    assert (sent, sizes) == (5, [4, 1])
    assert agent.sync_state_counts() == {"accepted": 5, "pending": 2}
    # The next tick sends them, in order after the others: nothing sealed is left behind.
    sent, sizes = _drain(agent, until_empty=False, on_call=0, extra=0)
    assert (sent, sizes) == (2, [2])
    assert agent.sync_state_counts() == {"accepted": 7}


def test_sync_now_drains_to_empty(tmp_path, cloud):
    agent = _agent_with(tmp_path, cloud, 5)
    sent, sizes = _drain(agent, until_empty=True, on_call=2, extra=2)
    assert (sent, sizes) == (7, [4, 1, 2])
    assert agent.sync_state_counts() == {"accepted": 7}


def test_full_batches_are_followed_at_once(tmp_path, cloud):
    agent = _agent_with(tmp_path, cloud, 9)
    sent, sizes = _drain(agent, until_empty=False, on_call=0, extra=0)
    assert (sent, sizes) == (9, [4, 4, 1])
    assert agent.sync_state_counts() == {"accepted": 9}
