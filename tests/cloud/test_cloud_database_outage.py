"""The ledger database goes away and comes back while the cloud runs (PostgreSQL behind a real
TCP relay that is cut): requests get a 503 `database_unavailable` problem with Retry-After, not a
500 and a traceback each; the outage is logged once when it starts and once when it ends; the
service answers again without a restart."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_stub.app import init_app
from cloud_stub.config import CloudConfig
from cloud_stub.repository import Store
from cloud_stub.service import CloudService
from tests.tcpcut import TcpCut


def _through(url: str, port: int) -> str:
    """The same database URL, reached through the relay's port."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def _events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def test_a_database_outage_is_a_503_logged_once_and_the_service_recovers(tmp_path, pg_database, caplog,
                                                                              monkeypatch):
    from cloud_stub import repository_pg
    from tests.pg.server import scratch_schema

    # A request waits this long for a connection before its 503 (5 s in service): 1 s here.
    monkeypatch.setattr(repository_pg, "POOL_WAIT_SECONDS", 1.0)

    with scratch_schema(pg_database) as url:
        target = urlsplit(url)
        relay = TcpCut(target.hostname or "127.0.0.1", target.port or 5432)
        config = CloudConfig(data_dir=tmp_path / "cloud", audit_interval=0, verify_workers=0,
                             database_url=_through(url, relay.port))
        service = CloudService(config)
        client = TestClient(TestServer(init_app(config, service), host="127.0.0.1"))
        await client.start_server()
        admin = {"Authorization": f"Bearer {service.admin_token}"}
        caplog.set_level(logging.INFO, logger="stalela.cloud")
        try:
            assert (await client.get("/v1/health")).status == 200
            assert (await client.post("/v1/admin/merchants", json={"nif": "A1234567B", "name": "SHOP"},
                                      headers=admin)).status == 201

            relay.cut()
            for _ in range(3):
                resp = await client.get("/v1/admin/outlets", headers=admin)
                body = await resp.json(content_type=None)
                assert resp.status == 503, body
                assert resp.headers["Content-Type"].startswith("application/problem+json")
                assert body["type"].endswith("/database_unavailable") and resp.headers["Retry-After"] == "5"
            # A write refused during the outage changed nothing (checked once the database is back).
            refused = await client.post("/v1/admin/merchants", json={"nif": "B7654321C", "name": "OTHER"},
                                        headers=admin)
            assert refused.status == 503
            health = await client.get("/v1/health")
            assert health.status == 503 and (await health.json())["database"]["up"] is False
            assert len(_events(caplog, "database.unavailable")) == 1  # once, not once per request
            assert not _events(caplog, "http.unhandled") and "Traceback" not in caplog.text

            relay.restore()
            # The pool reconnects on its own (its attempts back off exponentially from 1 s).
            deadline = time.monotonic() + 30
            while (await client.get("/v1/health")).status != 200:
                assert time.monotonic() < deadline, "the service did not see the database back"
                await asyncio.sleep(0.2)
            again = await client.post("/v1/admin/merchants", json={"nif": "B7654321C", "name": "OTHER"},
                                      headers=admin)
            assert again.status == 201, await again.text()  # the refused one had not been written
            assert len(_events(caplog, "database.recovered")) == 1
        finally:
            await client.close()
            service.close()
            relay.close()


def test_which_sqlite_errors_mean_the_database_is_unavailable(tmp_path):
    """A file locked past busy_timeout is an outage (503); a statement SQLite refuses is not."""
    store = Store(tmp_path / "cloud.sqlite3", background_checkpoints=False)
    holder = sqlite3.connect(tmp_path / "cloud.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        other = sqlite3.connect(tmp_path / "cloud.sqlite3", timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("BEGIN IMMEDIATE")  # a writer (WAL lets readers in)
        other.close()
        assert store.unavailable(locked.value).startswith("SQLite: database is locked")
        with pytest.raises(sqlite3.OperationalError) as bad:
            holder.execute("SELECT no_such_column FROM outlets")
        assert store.unavailable(bad.value) is None
        assert store.unavailable(ValueError("not a database error")) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
