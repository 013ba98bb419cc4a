"""Backup and restore of the cloud's PostgreSQL ledger, as docs/operations.md tells an operator:
pg_dump, restore into an empty database, `stalela cloud verify` passes on the restored ledger —
and fails on a restored ledger that was altered."""
from __future__ import annotations

import shutil
import subprocess
import sys

import psycopg
import pytest

from tests.pg.server import scratch_database
from tests.support import ROOT, CloudProcess, EnrolledAgent, invoice, python_path


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted((p for p in __import__("glob").glob(
        f"/usr/lib/postgresql/*/bin/{name}")), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} is needed (Debian's postgresql-client): apt-get install postgresql-client")
    return found


def _verify(data_dir, outlet, url) -> subprocess.CompletedProcess:
    env = {"STALELA_CLOUD_DATABASE_URL": url, "PYTHONPATH": python_path(), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "agent", "cloud", "verify", "--data", str(data_dir),
                           "--outlet", outlet], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_dump_restore_verify(tmp_path, monkeypatch):
    with scratch_database() as live, scratch_database() as restored:
        monkeypatch.setenv("STALELA_CLOUD_DATABASE_URL", live)
        cloud = CloudProcess(tmp_path / "cloud")
        token = cloud.add_outlet()
        cloud.start()
        agent = EnrolledAgent(tmp_path / "agent", cloud, token)
        try:
            agent.start()
            for i in range(12):
                assert agent.post("/v1/invoices", invoice(f"BK-{i}"))[0] == 201
            assert agent.wait_synced(60) == {"accepted": 12}
        finally:
            agent.stop()
            cloud.stop()
        # The operator's backup, restored into an empty database.
        dump = tmp_path / "ledger.dump"
        subprocess.run([_pg_tool("pg_dump"), "--format=custom", "--file", str(dump), live], check=True)
        subprocess.run([_pg_tool("pg_restore"), "--no-owner", "--dbname", restored, str(dump)], check=True)
        res = _verify(cloud.data_dir, agent.outlet, restored)
        assert res.returncode == 0, res.stderr
        assert "valid: 12 entries" in res.stdout
        # A restored ledger someone altered does not pass.
        with psycopg.connect(restored, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")  # the append-only guard, bypassed
            conn.execute("UPDATE ledger SET invoice = replace(invoice, 'BK-3', 'BK-X') "
                         "WHERE invoice LIKE '%BK-3%'")
        res = _verify(cloud.data_dir, agent.outlet, restored)
        assert res.returncode != 0 and "NOT valid" in res.stderr
