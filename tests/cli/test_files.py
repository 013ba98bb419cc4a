"""Files: the data folder 0700 and the journal, token and config 0600 whatever the umask; the
enrollment token from standard input or a file, never only argv."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.support import ROOT, CloudProcess, python_path


def stalela(*args, umask: int | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    def child_umask():
        os.umask(umask)

    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=python_path()), timeout=60, input=stdin,
                          preexec_fn=child_umask if umask is not None else None)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    c = CloudProcess(tmp_path_factory.mktemp("cloud") / "cloud")
    c.start()
    yield c
    c.stop()


def test_init_and_enroll_under_umask_000(tmp_path, cloud):
    data = tmp_path / "agent"
    res = stalela("agent", "init", "--data", str(data), "--cloud", cloud.url, umask=0o000)
    assert res.returncode == 0, res.stderr
    assert mode(data) == 0o700
    assert mode(data / "config.toml") == 0o600
    assert mode(data / "agent.db") == 0o600
    token = cloud.add_outlet("UMASK-1")
    res = stalela("agent", "enroll", "--data", str(data), "--token", "-", umask=0o000, stdin=token + "\n")
    assert res.returncode == 0, res.stderr
    assert mode(data) == 0o700 and mode(data / "keys") == 0o700
    assert mode(data / "keys" / "agent.key") == 0o600 and mode(data / "keys" / "cloud.token") == 0o600
    for journal in data.glob("agent.db*"):  # the -wal and -shm files follow the database file's mode
        assert mode(journal) == 0o600, journal
    # Nothing of the token leaked into the output.
    assert token not in res.stdout + res.stderr


def test_enrollment_token_from_a_file(tmp_path, cloud):
    data = tmp_path / "agent"
    assert stalela("agent", "init", "--data", str(data), "--cloud", cloud.url).returncode == 0
    token_file = tmp_path / "token.txt"
    token_file.write_text(cloud.add_outlet("FILE-1") + "\n")
    res = stalela("agent", "enroll", "--data", str(data), "--token", f"@{token_file}")
    assert res.returncode == 0, res.stderr
    assert "enrolled as agent" in res.stdout and (data / "enrollment.json").exists()


def test_a_missing_or_empty_token_is_a_clean_error(tmp_path):
    data = tmp_path / "agent"
    assert stalela("agent", "init", "--data", str(data)).returncode == 0
    res = stalela("agent", "enroll", "--data", str(data), "--token", "-", stdin="")
    assert res.returncode == 1 and "token is empty" in res.stderr and "Traceback" not in res.stderr
    res = stalela("agent", "enroll", "--data", str(data), "--token", f"@{tmp_path / 'nope'}")
    assert res.returncode == 1 and "cannot read the token file" in res.stderr
    assert not (data / "keys").exists() and not (data / "enrollment.json").exists()


def test_a_journal_left_readable_is_tightened(harness):
    db = harness.data_dir / "agent.db"
    os.chmod(db, 0o644)
    res = stalela("sync", "status", "--data", str(harness.data_dir))
    assert res.returncode == 0, res.stderr
    assert mode(db) == 0o600
