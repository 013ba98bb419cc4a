"""Fixtures: a real cloud service, served over HTTP on 127.0.0.1, on a SQLite file in tmp_path,
or on PostgreSQL with STALELA_TEST_CLOUD_DB=postgresql (a database of this run, a schema per
test: tests/pg/server.py says which server)."""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_stub.app import init_app
from cloud_stub.config import CloudConfig
from cloud_stub.service import CloudService

from cloud_helpers import Clock, Harness

BACKEND = os.environ.get("STALELA_TEST_CLOUD_DB", "sqlite")
if BACKEND not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"STALELA_TEST_CLOUD_DB={BACKEND!r}: use sqlite or postgresql")


@pytest.fixture(scope="session")
def pg_database():
    """The PostgreSQL database of this test run (created, then dropped)."""
    from tests.pg.server import scratch_database

    with scratch_database() as url:
        yield url


@pytest.fixture
def database_url(request) -> str | None:
    """None (the SQLite file in the data folder) or a PostgreSQL schema of this test."""
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
    # In-process checks by default (no worker processes per test); the reconciliation tests
    # run again with the verifier's workers (test_cloud_reconcile.py, test_cloud_verifier.py).
    return CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, gap_grace=timedelta(0), clock=clock,
                       verify_workers=0, database_url=database_url)


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


# Tests that open the SQLite file itself (its triggers, a copy of it, a version-1 file): on a
# PostgreSQL run they are reported as skipped, never silently; tests/cloud/test_repository_backends.py
# checks the same properties (append-only ledger, upgrading a database with data) on both backends.
SQLITE_FILE_TESTS = {
    "test_cloud_ledger_seal.py": {"test_database_refuses_update_and_delete_on_the_ledger",
                                  "test_verify_detects_tampering"},
    "test_cloud_devices.py": {"test_a_ledger_of_the_previous_schema_opens_and_goes_on"},
    "test_cloud_verifier.py": None,  # every test compares SQLite copies of one ledger
}


def pytest_collection_modifyitems(config, items):
    if BACKEND == "sqlite":
        return
    skip = pytest.mark.skip(reason="reads or copies the SQLite file directly (STALELA_TEST_CLOUD_DB=postgresql)")
    for item in items:
        names = SQLITE_FILE_TESTS.get(item.path.name, ())
        if item.path.parent.name == "cloud" and (names is None or item.originalname in names):
            item.add_marker(skip)
