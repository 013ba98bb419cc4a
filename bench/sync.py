"""Backlog drain after an outage, and the cloud's reconciliation throughput.

A real cloud process and an agent enrolled with it: the backlog is sealed offline in-process
through the agent's own journal (with credentials the cloud issued), then uploaded with the
agent's SyncWorker over loopback. The cloud verifies every credential, signature, block, window
and chain link before committing, so the drain rate is also its reconciliation rate.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.cloud_client import CloudClient  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.renewal import fetch_credential  # noqa: E402
from agent.service import AgentService  # noqa: E402
from agent.sync import SyncWorker  # noqa: E402
from tests.support import CloudProcess, EnrolledAgent  # noqa: E402

from .workload import ten_item_invoice  # noqa: E402


def backlog_drain(workdir: Path, count: int, batch: int = 1000) -> dict[str, float]:
    cloud = CloudProcess(workdir / "cloud")
    cloud.start(20, "--block-size", "10000")
    try:
        agent = EnrolledAgent(workdir / "agent", cloud, cloud.add_outlet(), block_size=10000)
        config = load_config(agent.data_dir)
        service = AgentService.open(config)
        async def credentials():
            async with CloudClient(config.cloud_url, token=agent.cloud_token, timeout=120) as client:
                have = 10000  # enrollment fetched the first one
                while have < count:
                    await fetch_credential(service, client)
                    have += 10000
        asyncio.run(credentials())
        # Seal the backlog offline (in-process, group commit) while the cloud is idle.
        t = time.perf_counter()
        pending = []
        for i in range(count):
            pending.append(service.journal.submit(service.prepare(ten_item_invoice(f"B-{i}"))))
            if len(pending) >= 256:
                for f in pending:
                    f.result()
                pending.clear()
        for f in pending:
            f.result()
        seal_s = time.perf_counter() - t
        service.close()

        async def drain():
            async with CloudClient(config.cloud_url, token=agent.cloud_token, timeout=300) as c:
                worker = SyncWorker(config.db_path, c, batch_size=batch, attempts=3)
                try:
                    t0 = time.perf_counter()
                    n = await worker.drain()
                    return n, time.perf_counter() - t0
                finally:
                    worker.close()
        n, drain_s = asyncio.run(drain())
        counts = agent.sync_state_counts()
        if counts.get("accepted", 0) != count:
            raise RuntimeError(f"backlog not fully accepted: {counts}")
        return {"backlog": count, "drain_s": drain_s, "drain_rate": n / drain_s, "offline_seal_rate": count / seal_s}
    finally:
        cloud.stop()
