"""The cloud's database for the forwarding tests: its SQLite file in the data folder, or on
PostgreSQL with STALELA_TEST_CLOUD_DB=postgresql (as tests/cloud): a schema of this test in a
database of this run, named to every cloud the test starts (in this process through
`fwd_support.cloud_config`, as `stalela cloud` subprocesses through STALELA_CLOUD_DATABASE_URL)."""
from __future__ import annotations

import os

import pytest

from cloud_stub.config import DATABASE_URL_ENV

BACKEND = os.environ.get("STALELA_TEST_CLOUD_DB", "sqlite")
if BACKEND not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"STALELA_TEST_CLOUD_DB={BACKEND!r}: use sqlite or postgresql")


@pytest.fixture(scope="session")
def forwarding_pg_database():
    """The PostgreSQL database of this test run (created, then dropped)."""
    from tests.pg.server import scratch_database

    with scratch_database() as url:
        yield url


@pytest.fixture(autouse=True)
def cloud_database(request, monkeypatch) -> str | None:
    """None (SQLite) or the URL of this test's PostgreSQL schema, set in the environment."""
    if BACKEND == "sqlite":
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        yield None
        return
    from tests.pg.server import scratch_schema

    with scratch_schema(request.getfixturevalue("forwarding_pg_database")) as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        yield url


@pytest.fixture
def procs():
    """The processes a test started (simulator, clouds), stopped in reverse order afterwards."""
    started: list = []
    yield started
    for p in reversed(started):
        p.stop()
