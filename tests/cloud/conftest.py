"""Fixtures: a real cloud service on a SQLite file in tmp_path, served over HTTP on 127.0.0.1."""
from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_stub.app import init_app
from cloud_stub.config import CloudConfig
from cloud_stub.service import CloudService

from cloud_helpers import Clock, Harness


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(tmp_path, clock) -> CloudConfig:
    # In-process checks by default (no worker processes per test); the reconciliation tests
    # run again with the verifier's workers (test_cloud_reconcile.py, test_cloud_verifier.py).
    return CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, gap_grace=timedelta(0), clock=clock,
                       verify_workers=0)


@pytest.fixture
async def cloud(config, clock):
    service = CloudService(config)
    server = TestServer(init_app(config, service), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    try:
        yield Harness(client, service, clock)
    finally:
        await client.close()
        service.close()
