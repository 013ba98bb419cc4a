"""`stalela cloud ...`: administration on the database, and `serve` as a real process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cloud_stub.cli import cloud
from tests.support import python_path


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cloud, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


def test_every_command_has_help_with_an_example():
    for path, cmd in [((), cloud), *all_commands(cloud)]:
        result = CliRunner().invoke(cloud, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example:" in result.output, f"`stalela cloud {' '.join(path)}` has no Example"


def test_admin_workflow(tmp_path):
    data = str(tmp_path / "cloud")
    run("merchant", "add", "--data", data, "--nif", "A1234567B", "--name", "ABC SARL", "--rccm", "RC1")
    run("outlet", "add", "--data", data, "--merchant", "A1234567B", "--id", "LUB-01", "--name", "Centre",
        "--tz", "Africa/Lubumbashi", "--isf", "ISF-1")
    token = run("token", "create", "--data", data, "--outlet", "LUB-01", "--ttl", "2h").stdout.strip()
    assert token.startswith("stle_")
    listing = json.loads(run("outlets", "--data", data, "--json").stdout)
    assert [(o["id"], o["time_zone"], o["next_number"]) for o in listing] == [("LUB-01", "Africa/Lubumbashi", 1)]
    assert "no flags" in run("flags", "--data", data).stdout
    assert "0 new flag(s)" in run("audit", "--data", data).stdout
    assert "valid: 0 entries" in run("verify", "--data", data, "--outlet", "LUB-01").stdout
    # The token printed by the CLI enrolls an agent.
    from fiscal.signing import generate_private_key, public_key_text
    from cloud_stub.config import CloudConfig
    from cloud_stub.service import CloudService

    service = CloudService(CloudConfig(data_dir=Path(data), audit_interval=0))
    try:
        enrolled = service.enroll(token, public_key_text(generate_private_key()), "box")
        agent = service.authenticate(enrolled["agent_token"])
        cred, _ = service.issue_credential(agent, block_size=5)
    finally:
        service.close()
    out = run("credential", "revoke", "--data", data, cred["id"], "--reason", "lost").stdout
    assert f"credential {cred['id']} revoked" in out


def test_clean_errors(tmp_path):
    data = str(tmp_path / "cloud")
    result = run("outlets", "--data", data, ok=False)
    assert result.exit_code == 1 and "no cloud database" in result.output
    run("merchant", "add", "--data", data, "--nif", "A1", "--name", "M")
    for args, message in [
        (("merchant", "add", "--data", data, "--nif", "A1", "--name", "M"), "already exists"),
        (("outlet", "add", "--data", data, "--merchant", "NOPE", "--id", "O-1", "--name", "x"), "no merchant"),
        (("outlet", "add", "--data", data, "--merchant", "A1", "--id", "bad id", "--name", "x"), "outlet id"),
        (("token", "create", "--data", data, "--outlet", "NOPE"), "no outlet"),
        (("token", "create", "--data", data, "--outlet", "NOPE", "--ttl", "soon"), "duration"),
        (("credential", "revoke", "--data", data, "DC-NONE"), "no credential"),
        (("verify", "--data", data, "--outlet", "NOPE"), "no outlet"),
        (("ledger", "archive", "--data", data, "--month", "2026-1"), "a month is written YYYY-MM"),
        # SQLite's ledger is one table: nothing to archive, and nothing recorded.
        (("ledger", "archive", "--data", data, "--month", "2026-01"), "never archived in part"),
    ]:
        result = run(*args, ok=False)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "no archived month" in run("ledger", "archives", "--data", data).stdout


def test_serve_as_a_process(tmp_path):
    data = tmp_path / "cloud"
    env = dict(os.environ, PYTHONPATH=python_path())
    proc = subprocess.Popen([sys.executable, "-m", "cloud_stub", "serve", "--data", str(data), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = None
        for line in proc.stderr:
            event = json.loads(line)
            if event["event"] == "cloud.ready":
                ready = event
                break
        assert ready is not None, "the server never logged cloud.ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{ready['port']}/v1/health", timeout=5) as resp:
            assert json.load(resp)["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line)["event"] for line in rest.splitlines()]
    assert events[-2:] == ["cloud.stopping", "cloud.stopped"]
    for name in ("issuer-key.pem", "admin.token"):
        assert (data / name).stat().st_mode & 0o777 == 0o600
    assert (data / "cloud.sqlite3").exists()
    admin_token = (data / "admin.token").read_text().strip()
    assert admin_token not in line + rest
    assert "PRIVATE KEY" not in line + rest


@pytest.mark.parametrize("command", ["flags", "outlets"])
def test_read_commands_do_not_create_a_cloud(tmp_path, command):
    run(command, "--data", str(tmp_path / "typo"), ok=False)
    assert not (tmp_path / "typo").exists()


def test_serve_reads_the_database_url_from_the_service_credential(tmp_path):
    # systemd's LoadCredential= hands the URL over as a file in $CREDENTIALS_DIRECTORY: serve
    # uses it (here a server that does not answer: refused in one line, the password hidden).
    import os
    import socket
    import subprocess
    import sys

    from tests.support import ROOT
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database-url").write_text("postgresql://stalela:s3cret@127.0.0.1:1/ledger\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "STALELA_CLOUD_DATABASE_URL"}
    env.update(CREDENTIALS_DIRECTORY=str(creds), PYTHONPATH=python_path())
    res = subprocess.run([sys.executable, "-m", "agent", "cloud", "serve", "--data", str(tmp_path / "cloud"),
                          "--port", str(port)], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert res.returncode != 0
    assert "127.0.0.1:1" in res.stderr and "s3cret" not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_administration_commands_read_the_configuration_serve_reads(tmp_path, monkeypatch):
    """`--config` (or $STALELA_CLOUD_CONFIG) names the data folder the commands work on, as it
    does for `serve`: a command run beside a configured service does not write to ./cloud-data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STALELA_CLOUD_CONFIG", raising=False)
    monkeypatch.delenv("STALELA_CLOUD_DATABASE_URL", raising=False)
    (tmp_path / "cloud.toml").write_text(f'[server]\ndata_dir = "{tmp_path / "configured"}"\n')
    run("merchant", "add", "--config", "cloud.toml", "--nif", "A1234567B", "--name", "ABC SARL")
    monkeypatch.setenv("STALELA_CLOUD_CONFIG", "cloud.toml")
    run("outlet", "add", "--merchant", "A1234567B", "--id", "LUB-01", "--name", "Centre")
    assert (tmp_path / "configured" / "cloud.sqlite3").exists() and not (tmp_path / "cloud-data").exists()
    listing = json.loads(run("outlets", "--json").stdout)
    assert [o["id"] for o in listing] == ["LUB-01"]
    # --data is stronger than the file's data folder (here an empty one: refused, nothing created).
    other = run("outlets", "--data", "elsewhere", ok=False)
    assert other.exit_code == 1 and "no cloud database in elsewhere" in other.output
    assert not (tmp_path / "elsewhere").exists()
    # A configuration that does not load is refused as `serve` refuses it (exit 2, one line per
    # problem), before anything is opened.
    (tmp_path / "bad.toml").write_text('[server]\nport = "x"\n')
    bad = run("outlets", "--config", "bad.toml", ok=False)
    lines = bad.output.splitlines()
    assert bad.exit_code == 2 and lines[0] == "Error: invalid configuration (1 problem):"
    assert lines[1].lstrip().startswith("server.port")
    assert "Traceback" not in bad.output
