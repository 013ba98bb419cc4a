"""Fixtures: a real cloud (aiohttp test server on 127.0.0.1) on a SQLite file, or on PostgreSQL
with STALELA_TEST_CLOUD_DB=postgresql (as tests/cloud/conftest.py), and browsers' sessions of it
as plain HTTP clients with their own cookie jars."""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_stub.app import init_app
from cloud_stub.config import CloudConfig
from cloud_stub.service import CloudService

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cloud"))
from cloud_helpers import Clock, Harness  # noqa: E402

from dash_support import Dash  # noqa: E402

BACKEND = os.environ.get("STALELA_TEST_CLOUD_DB", "sqlite")


@pytest.fixture(scope="session")
def pg_database():
    from tests.pg.server import scratch_database

    with scratch_database() as url:
        yield url


@pytest.fixture
def database_url(request):
    if BACKEND == "sqlite":
        yield None
        return
    from tests.pg.server import scratch_schema

    with scratch_schema(request.getfixturevalue("pg_database")) as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(tmp_path, clock, database_url) -> CloudConfig:
    return CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, gap_grace=timedelta(0), clock=clock,
                       verify_workers=0, database_url=database_url, dashboard_session_ttl=timedelta(hours=1))


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


@pytest.fixture
async def browsers(cloud):
    """New HTTP clients of the same server, each with its own cookies (a person's browser)."""
    opened: list[TestClient] = []

    async def new() -> Dash:
        client = TestClient(cloud.client.server)
        await client.start_server()
        opened.append(client)
        return Dash(client)

    yield new
    for client in opened:
        await client._session.close()
