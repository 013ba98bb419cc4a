"""Clean one-line errors instead of tracebacks: busy ports, permissions, `./dev` usage, `-h`."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import ROOT, AgentHarness, python_path


def stalela(*args, cwd=ROOT, user: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "agent", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=python_path()), timeout=60)


def one_clean_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_cloud_serve_on_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = stalela("cloud", "serve", "--data", str(tmp_path / "cloud"), "--port", str(port))
    line = one_clean_line(res)
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert not (tmp_path / "cloud").exists()  # refused before the data folder was touched


def test_cloud_serve_on_a_host_that_does_not_resolve(tmp_path):
    res = stalela("cloud", "serve", "--data", str(tmp_path / "cloud"), "--host", "no-such-host.invalid")
    assert "cannot listen on no-such-host.invalid" in one_clean_line(res)


def test_cloud_serve_refuses_port_99999(tmp_path):
    res = stalela("cloud", "serve", "--data", str(tmp_path / "cloud"), "--port", "99999")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "99999" in res.stderr


def test_dash_h_in_a_real_process():
    res = stalela("sync", "status", "-h")
    assert res.returncode == 0 and res.stdout.startswith("Usage: ") and "--json" in res.stdout


def test_dev_without_argument_prints_its_usage_only():
    res = subprocess.run([str(ROOT / "dev")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: ./dev COMMAND")
    assert "set -" not in res.stdout and "#" not in res.stdout
    assert {line.split()[0] for line in res.stdout.splitlines()[1:]} == {"up", "test", "test-pg", "bench", "fuzz", "help"}
    bad = subprocess.run([str(ROOT / "dev"), "nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr and bad.stdout == ""


# ------------------------------------------------------------------------------ permissions
SERVICE_UID, OTHER_UID = 1, 65534  # `daemon` plays the service user; `nobody` the technician's shell


@pytest.fixture
def owned_folder():
    """An enrolled folder owned by another user, under a parent everyone can traverse."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as two users")
    parent = Path(tempfile.mkdtemp(prefix="stalela-perm-"))
    os.chmod(parent, 0o755)
    harness = AgentHarness(parent / "agent")
    for path in [parent / "agent", *(parent / "agent").rglob("*")]:
        try:
            os.chown(path, SERVICE_UID, SERVICE_UID)
        except FileNotFoundError:  # SQLite removes its -wal/-shm when the last connection closes
            pass
    # The other users run this checkout's code: every folder above it must let them through
    # (a checkout in a `mktemp -d` folder is 0700). Given back as it was afterwards.
    opened = [(d, d.stat().st_mode) for d in ROOT.parents if not d.stat().st_mode & 0o001]
    for folder, mode in opened:
        os.chmod(folder, mode | 0o001)
    try:
        yield harness.data_dir
    finally:
        for folder, mode in opened:
            os.chmod(folder, mode)
        shutil.rmtree(parent)


def test_a_folder_of_another_user_hints_at_sudo(owned_folder):
    line = one_clean_line(stalela("sync", "status", "--data", str(owned_folder), user=OTHER_UID))
    assert "permission denied" in line and "sudo -u daemon" in line and str(owned_folder) in line


def test_an_unreadable_config_or_journal_hints_at_sudo(owned_folder):
    os.chmod(owned_folder, 0o755)  # the folder opens, its files (0600) do not
    for args in (["credential", "status"], ["agent", "keys", "list"], ["verify"]):
        line = one_clean_line(stalela(*args, "--data", str(owned_folder), user=OTHER_UID))
        assert "sudo -u daemon" in line, (args, line)


def test_a_cloud_token_readable_by_others_is_refused(harness):
    token = harness.data_dir / "keys" / "cloud.token"
    os.chmod(token, 0o644)
    line = one_clean_line(stalela("credential", "renew", "--data", str(harness.data_dir)))
    assert "readable by others" in line and f"chmod 600 {token}" in line
    line = one_clean_line(stalela("sync", "now", "--data", str(harness.data_dir)))
    assert "readable by others" in line


def test_an_unreadable_key_hints_at_sudo(owned_folder):
    # The folder and journal open for this user; only the key (0600, the service user's) does not.
    os.chmod(owned_folder, 0o777)
    for path in owned_folder.glob("agent.db*"):
        os.chmod(path, 0o666)
    os.chmod(owned_folder / "config.toml", 0o644)
    os.chmod(owned_folder / "keys", 0o755)
    line = one_clean_line(stalela("report", "z", "--data", str(owned_folder), user=OTHER_UID))
    assert "permission denied" in line and "agent.key" in line and "sudo -u daemon" in line
