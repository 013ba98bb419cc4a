"""Commands pointed at a wrong or missing --data refuse it, say what to do and create nothing;
`credential status` exits 3 when the outlet cannot seal with its credential."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from agent.cli.main import cli
from tests.support import ROOT, invoice, python_path

# Every command that reads (or needs) an enrolled agent's folder.
NEEDS_ENROLLED = [
    ["sync", "status"], ["sync", "status", "--json"], ["sync", "now"], ["sync", "retry-quarantined"],
    ["credential", "status"], ["credential", "status", "--json"], ["credential", "renew"],
    ["verify"], ["verify", "--json"], ["agent", "keys", "list"], ["agent", "keys", "list", "--json"],
    ["agent", "keys", "create", "POS-09"], ["agent", "keys", "revoke", "POS-09"], ["agent", "run"],
    ["report", "x"], ["report", "z"], ["report", "a"], ["export", "--out", "EXPORT"],
]


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def stalela(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=python_path()), timeout=60, **kw)


@pytest.mark.parametrize("args", NEEDS_ENROLLED, ids=" ".join)
def test_a_missing_folder_is_refused_and_not_created(tmp_path, args):
    missing = tmp_path / "nowhere"
    args = [str(tmp_path / "export") if a == "EXPORT" else a for a in args]
    result = CliRunner().invoke(cli, [*args, "--data", str(missing)])
    assert result.exit_code == 1, result.output
    assert f"no enrolled agent in {missing}" in result.output and "stalela agent init" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not missing.exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize("args", NEEDS_ENROLLED, ids=" ".join)
def test_a_wrong_folder_is_left_as_it_was(tmp_path, args):
    wrong = tmp_path / "photos"
    wrong.mkdir()
    (wrong / "holiday.jpg").write_bytes(b"\xff\xd8")
    args = [str(tmp_path / "export") if a == "EXPORT" else a for a in args]
    result = CliRunner().invoke(cli, [*args, "--data", str(wrong)])
    assert result.exit_code == 1 and "no enrolled agent in" in result.output, result.output
    assert snapshot(wrong) == ["holiday.jpg"]


def test_sync_status_in_a_subprocess_from_the_default_folder(tmp_path):
    # No --data at all: the default ./stalela-data of a new user's shell, which does not exist.
    env = {k: v for k, v in os.environ.items() if k != "STALELA_DATA"}
    res = subprocess.run([sys.executable, "-m", "agent", "sync", "status"], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(env, PYTHONPATH=python_path()), timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no enrolled agent in stalela-data" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == "" and list(tmp_path.iterdir()) == []


def _status(harness):
    res = stalela("credential", "status", "--data", str(harness.data_dir), "--json")
    return res.returncode, json.loads(res.stdout)


def test_credential_status_exit_code_follows_what_the_outlet_can_do(harness):
    code, body = _status(harness)
    assert code == 3 and body["can_seal"] is False and body["reason"] == "no_credential"
    text = stalela("credential", "status", "--data", str(harness.data_dir))
    assert text.returncode == 3 and "sealing is blocked" in text.stderr

    harness.add_credential(harness.credential(1, 1))
    code, body = _status(harness)
    assert code == 0 and body["can_seal"] is True and body["remaining"] == 1

    # The one number is used by a real sale: nothing left, health blocked, and the CLI says so.
    harness.start()
    status, sealed, _ = harness.post("/v1/invoices", invoice("ONE"))
    assert status in (200, 201) and sealed["status"] == "sealed", sealed
    assert harness.get("/v1/health", key=None)[1]["status"] == "blocked"
    harness.stop()
    code, body = _status(harness)
    assert code == 3 and body["reason"] == "exhausted" and body["remaining"] == 0
    assert body["active"]["next_number"] == 2


def test_credential_status_blocked_when_the_clock_is_before_the_window(harness):
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    harness.add_credential(harness.credential(1, 50, not_before=later))
    code, body = _status(harness)
    assert code == 3 and body["reason"] == "clock_before_validity" and body["remaining"] == 50
