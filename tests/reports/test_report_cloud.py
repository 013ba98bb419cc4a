"""The cloud's X and A reports equal the agent's after reconciliation (same aggregation code)."""
from __future__ import annotations

import asyncio
import urllib.error
from datetime import datetime

import pytest

from agent.cli.credential_cmd import renew_now
from agent.cloud_client import CloudClient
from agent.config import load_config
from agent.reports import a_report_for, x_report
from agent.store.db import connect
from agent.sync import SyncWorker
from tests.reports.helpers import open_service, seal_in_process, varied_request
from tests.support import EnrolledAgent


def _reconciled_agent_and_cloud_agree(tmp_path, cloud, n: int) -> None:
    agent = EnrolledAgent(tmp_path / "agent", cloud, cloud.add_outlet(), block_size=min(n + 50, 10_000))
    config = load_config(agent.data_dir)
    while True:  # enough numbers for n invoices
        renew_now(config)
        conn = connect(config.db_path)
        have = conn.execute("SELECT sum(block_end - block_start + 1) FROM credentials").fetchone()[0]
        conn.close()
        if have >= n + 10:
            break
    sealed = seal_in_process(agent.data_dir, [varied_request(i) for i in range(n)])
    credits = [varied_request(n + k, type="FA", items=[sealed[k]["items"][0]], payments=[{"method": "C"}],
                              reference={"nature": "COR", "code": sealed[k]["security"]["code"]})
               for k in range(0, 10, 2) if sealed[k]["type"] == "FV"]
    seal_in_process(agent.data_dir, credits)

    async def drain():
        async with CloudClient(config.cloud_url, token=agent.cloud_token, timeout=30) as client:
            worker = SyncWorker(config.db_path, client, batch_size=1000)
            try:
                return await worker.drain()
            finally:
                worker.close()

    assert asyncio.run(drain()) == n + len(credits)
    assert agent.sync_state_counts() == {"accepted": n + len(credits)}

    service = open_service(agent.data_dir)
    try:
        mine = x_report(service.journal.reader, service.identity, None)
        today = datetime.now(service.tz).date().isoformat()
        my_a = a_report_for(service.journal.reader, service.identity, service.tz, today, today)
    finally:
        service.close()
    theirs = cloud.get(f"/v1/outlets/{agent.outlet}/reports/x", agent.cloud_token)
    assert theirs["totals"]["count"] == n + len(credits)
    assert theirs["totals"] == mine["totals"]
    assert mine["totals"]["credits"]["count"] == len(credits) > 0
    their_a = cloud.get(f"/v1/outlets/{agent.outlet}/reports/a?from={today}&to={today}", cloud.admin_token())
    assert their_a["count"] == my_a["count"] and their_a["lines"] == my_a["lines"] and their_a["sums"] == my_a["sums"]
    assert cloud.get(f"/v1/outlets/{agent.outlet}/reports/x?from={today}&to={today}", agent.cloud_token)["totals"] \
        == mine["totals"]
    # An agent sees only its own outlet's reports; a bad period is a problem, not a 500.
    with pytest.raises(urllib.error.HTTPError) as err:
        cloud.get("/v1/outlets/OTHER-01/reports/x", agent.cloud_token)
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        cloud.get(f"/v1/outlets/{agent.outlet}/reports/a?from=yesterday", agent.cloud_token)
    assert err.value.code in (400, 422)


@pytest.mark.clock_edges
def test_agent_and_cloud_reports_equal_on_1000_invoices(tmp_path, cloud):
    _reconciled_agent_and_cloud_agree(tmp_path, cloud, 1000)


@pytest.mark.slow
def test_agent_and_cloud_reports_equal_on_10000_invoices(tmp_path, cloud):
    _reconciled_agent_and_cloud_agree(tmp_path, cloud, 10_000)
