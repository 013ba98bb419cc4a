"""`stalela cloud serve`'s configuration: file, environment, options, secrets from files, and
`stalela cloud config check|template`. Real `serve` and `config` processes where it matters."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
import urllib.request
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cloud_stub.config import CloudConfig
from cloud_stub.settings import ConfigError, load
from tests.support import python_path

BACKEND = os.environ.get("STALELA_TEST_CLOUD_DB", "sqlite")


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any cloud setting of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("STALELA_CLOUD_") and k != "CREDENTIALS_DIRECTORY"}
    return {**env, "PYTHONPATH": python_path(), **extra}


def cloud(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud_stub", *args], capture_output=True, text=True,
                          env=_env(**env), cwd=cwd, timeout=timeout)


def check(tmp_path: Path, *args: str, **env: str) -> dict[str, dict]:
    """`config check --json`: {key: {"value", "origin"}}."""
    res = cloud("config", "check", "--json", *args, cwd=tmp_path, **env)
    assert res.returncode == 0, res.stdout + res.stderr
    return {row["key"]: row for row in json.loads(res.stdout)["settings"]}


@contextmanager
def busy_port():
    """A port on 127.0.0.1 that something else listens on, for as long as the block runs."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture(autouse=True)
def _no_cloud_environment(monkeypatch):
    # The in-process tests read the environment too: start from none of the cloud's variables.
    for name in list(os.environ):
        if name.upper().startswith("STALELA_CLOUD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def serve_until_ready(args: list[str], cwd: Path, **env: str) -> tuple[dict, str]:
    """Start `serve`, wait for cloud.ready, stop it with SIGTERM: (the ready event, all stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "cloud_stub", "serve", *args], stderr=subprocess.PIPE,
                            text=True, env=_env(**env), cwd=cwd)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            event = json.loads(line)
            if event["event"] == "cloud.ready":
                with urllib.request.urlopen(f"http://127.0.0.1:{event['port']}/v1/health", timeout=10) as resp:
                    assert json.load(resp)["status"] == "ok"
                proc.terminate()
                seen.append(proc.stderr.read())
                assert proc.wait(timeout=30) == 0
                return event, "".join(seen)
        raise AssertionError("serve never became ready:\n" + "".join(seen))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ precedence
def test_each_level_beats_the_next(tmp_path):
    # One key set at every level, and keys set down to each level: the origin and value of each.
    config = write(tmp_path / "cloud.toml", '[server]\nport = 1111\nthreads = 3\n[ledger]\nvalidity = "6h"\n'
                                            'gap_grace = "2h"\n[dgi]\nrate = 5.0\n')
    os.environ["STALELA_CLOUD_SERVER__PORT"] = "2222"
    os.environ["STALELA_CLOUD_LEDGER__VALIDITY"] = "3h"
    loaded = load(config, {("server", "port"): ("--port", 3333)})
    rows = {r["key"]: r for r in loaded.rows()}
    assert (rows["server.port"]["value"], rows["server.port"]["origin"]) == (3333, "cli --port")
    assert (rows["ledger.validity"]["value"], rows["ledger.validity"]["origin"]) == \
        ("3h", "env STALELA_CLOUD_LEDGER__VALIDITY")
    assert (rows["server.threads"]["value"], rows["server.threads"]["origin"]) == (3, "file")
    assert (rows["dgi.concurrency"]["value"], rows["dgi.concurrency"]["origin"]) == (32, "default")
    # Without the option the environment wins; without both, the file.
    assert load(config).settings.server.port == 2222
    del os.environ["STALELA_CLOUD_SERVER__PORT"]
    assert load(config).settings.server.port == 1111


def test_config_check_names_each_origin(tmp_path):
    write(tmp_path / "cloud.toml", '[server]\nport = 1111\n[ledger]\nvalidity = "6h"\n')
    rows = check(tmp_path, "--config", "cloud.toml", STALELA_CLOUD_SERVER__PORT="2222")
    assert rows["server.port"] == {"key": "server.port", "value": 2222, "origin": "env STALELA_CLOUD_SERVER__PORT"}
    assert rows["ledger.validity"] == {"key": "ledger.validity", "value": "6h", "origin": "file"}
    assert rows["ledger.gap_grace"] == {"key": "ledger.gap_grace", "value": "1h", "origin": "default"}
    # $STALELA_CLOUD_CONFIG names the file as --config does.
    assert check(tmp_path, STALELA_CLOUD_CONFIG="cloud.toml")["ledger.validity"]["origin"] == "file"


def test_serve_applies_option_over_environment_over_file(tmp_path):
    # The file's port is taken; the environment says 0 (any free port): serve starts, so the
    # environment won. The environment's data folder loses to --data.
    with busy_port() as taken:
        write(tmp_path / "cloud.toml", f'[server]\nport = {taken}\ndata_dir = "from-file"\nworkers = 0\n')
        ready, _ = serve_until_ready(["--config", "cloud.toml", "--data", "from-cli"], tmp_path,
                                     STALELA_CLOUD_SERVER__PORT="0", STALELA_CLOUD_SERVER__DATA_DIR="from-env")
    assert ready["port"] != taken
    assert ready["data_dir"] == "from-cli" and (tmp_path / "from-cli" / "issuer-key.pem").exists()
    assert not (tmp_path / "from-env").exists() and not (tmp_path / "from-file").exists()


def test_every_key_reaches_the_service(tmp_path):
    # A file giving every key a value other than its default: each shows in CloudConfig.
    secret = write(tmp_path / "admin-token", "stla_" + "a" * 40 + "\n")
    text = f"""
[server]
data_dir = "d"
host = "127.0.0.2"
port = 9001
log_level = "DEBUG"
threads = 7
workers = 3
max_body = 4096
secure_cookies = true
session_ttl = "2h"
admin_token_file = "{secret}"
[ledger]
block_size = 50
max_block_size = 60
validity = "6h"
clock_slack = "1m"
gap_grace = "0s"
audit_interval = "30s"
token_ttl = "2h"
merchant_token_ttl = "30d"
max_batch = 10
parallel_min_batch = 5
chunks_per_worker = 2
[dgi]
url = "https://emcf.example/"
concurrency = 4
rate = 2.5
timeout = "5s"
lease = "1m"
lookup = false
poll = "0.5s"
slice = 9
backoff_cap = "1m"
"""
    config = CloudConfig.from_settings(load(write(tmp_path / "cloud.toml", text)))
    default = CloudConfig()
    expected = dict(data_dir=Path("d"), host="127.0.0.2", port=9001, workers=7, verify_workers=3, max_body=4096,
                    secure_cookies=True, dashboard_session_ttl=timedelta(hours=2), admin_token="stla_" + "a" * 40,
                    block_size=50, max_block_size=60, credential_validity=timedelta(hours=6),
                    clock_slack=timedelta(minutes=1), gap_grace=timedelta(0), audit_interval=30.0,
                    token_ttl=timedelta(hours=2), merchant_token_ttl=timedelta(days=30), max_batch=10,
                    parallel_min_batch=5, chunks_per_worker=2, dgi_url="https://emcf.example/", dgi_concurrency=4,
                    dgi_rate=2.5, dgi_timeout=5.0, dgi_lease=timedelta(minutes=1), dgi_lookup=False, dgi_poll=0.5,
                    dgi_slice=9, dgi_backoff_cap=60.0)
    for name, value in expected.items():
        assert getattr(config, name) == value, name
        assert getattr(default, name) != value, name


# ------------------------------------------------------------------------------ bad configurations
BAD = [
    # (id, file text or None, extra serve arguments, environment, what the message says)
    ("unknown-key", "[server]\nprot = 8710\n", [], {}, "unknown key server.prot"),
    ("unknown-section", "[serve]\nport = 8710\n", [], {}, "unknown section [serve]"),
    ("key-outside-a-section", "port = 8710\n", [], {}, "port = … is outside any section"),
    ("not-toml", "[server\nport = \n", [], {}, "is not valid TOML"),
    ("wrong-type", '[server]\nport = "high"\n', [], {}, "server.port: Input should be a valid integer"),
    ("port-out-of-range", "[server]\nport = 70000\n", [], {}, "server.port: Input should be less than or equal to 65535"),
    ("option-out-of-range", None, ["--port", "99999"], {}, "(got 99999) [from --port]"),
    ("env-out-of-range", None, [], {"STALELA_CLOUD_LEDGER__BLOCK_SIZE": "0"},
     "ledger.block_size: Input should be greater than or equal to 1 (got '0') [from STALELA_CLOUD_LEDGER__BLOCK_SIZE]"),
    ("env-unknown-section", None, [], {"STALELA_CLOUD_SERVR__PORT": "1"}, "STALELA_CLOUD_SERVR__PORT: unknown section [servr]"),
    ("env-unknown-key", None, [], {"STALELA_CLOUD_SERVER__PROT": "1"}, "unknown key server.prot [from STALELA_CLOUD_SERVER__PROT]"),
    ("not-a-duration", '[ledger]\nvalidity = "12 hours"\n', [], {}, "ledger.validity: must be a duration such as 30s"),
    ("duration-out-of-range", None, ["--gap-grace", "90d"], {}, "ledger.gap_grace: must be between 0s and 30d"),
    ("block-above-maximum", "[ledger]\nblock_size = 600\nmax_block_size = 500\n", [], {},
     "block_size 600 is above max_block_size 500"),
    ("bad-workers", None, ["--workers", "many"], {}, 'server.workers: must be "auto" or a number from 0 to 256'),
    ("bad-log-level", '[server]\nlog_level = "LOUD"\n', [], {}, "server.log_level"),
    ("not-postgresql", '[database]\nurl = "mysql://db/ledger"\n', [], {}, "database.url: must be a postgresql:// URL"),
    ("bad-dgi-url", '[dgi]\nurl = "emcf.example"\n', [], {}, "dgi.url: must be an http:// or https:// URL"),
    ("missing-config-file", None, ["--config", "nowhere.toml"], {}, "configuration file nowhere.toml (from --config) does not exist"),
    ("missing-config-from-env", None, [], {"STALELA_CLOUD_CONFIG": "gone.toml"},
     "configuration file gone.toml (from $STALELA_CLOUD_CONFIG) does not exist"),
    ("missing-secret-file", '[database]\nurl_file = "/nonexistent/database-url"\n', [], {},
     "database.url_file: /nonexistent/database-url does not exist"),
    ("secret-file-is-a-folder", '[database]\nurl_file = "."\n', [], {}, "database.url_file: . is a directory"),
    ("url-and-url-file", '[database]\nurl = "postgresql://db/x"\nurl_file = "/x"\n', [], {},
     "database.url and database.url_file are both set (file): keep one"),
    ("admin-token-too-short", None, [], {"STALELA_CLOUD_SERVER__ADMIN_TOKEN_FILE": "short-token"},
     "must hold one token of at least 16 printable ASCII characters"),
]


@pytest.mark.parametrize("text,args,env,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_serve_refuses_a_bad_configuration(tmp_path, text, args, env, message):
    write(tmp_path / "short-token", "abc\n")
    if text is not None:
        write(tmp_path / "cloud.toml", text)
        args = ["--config", "cloud.toml", *args]
    res = cloud("serve", "--data", "data", *args, cwd=tmp_path, **env)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("Error: invalid configuration (")
    assert any(message in line for line in lines[1:]), res.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created
    # `config check` says the same, and exits 2 as well.
    checked = cloud("config", "check", *[a for a in args if a not in ("--data", "data")], cwd=tmp_path, **env) \
        if "--port" not in args and "--gap-grace" not in args and "--workers" not in args else None
    if checked is not None:
        assert checked.returncode == 2 and message in checked.stderr and "Traceback" not in checked.stderr


def test_a_secret_file_readable_by_everyone_is_refused(tmp_path):
    write(tmp_path / "database-url", "postgresql://stalela:s3cret@127.0.0.1:1/ledger\n", mode=0o644)
    write(tmp_path / "cloud.toml", f'[database]\nurl_file = "{tmp_path / "database-url"}"\n')
    res = cloud("serve", "--config", "cloud.toml", "--data", "data", cwd=tmp_path)
    assert res.returncode == 2 and "is readable by every user (mode 644); run: chmod 600" in res.stderr
    assert "s3cret" not in res.stderr and not (tmp_path / "data").exists()


def test_serve_on_a_busy_port_is_refused_before_the_data_folder(tmp_path):
    with busy_port() as port:
        write(tmp_path / "cloud.toml", f"[server]\nport = {port}\n")
        res = cloud("serve", "--config", "cloud.toml", "--data", "data", cwd=tmp_path)
    assert res.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "data").exists()


def test_config_check_json_lists_the_problems(tmp_path):
    write(tmp_path / "cloud.toml", '[server]\nport = -1\n[dgi]\nconcurrency = 0\n')
    res = cloud("config", "check", "--config", "cloud.toml", "--json", cwd=tmp_path)
    assert res.returncode == 2
    report = json.loads(res.stdout)
    assert report["valid"] is False and len(report["errors"]) == 2
    assert report["errors"][0].startswith("server.port:") and report["errors"][1].startswith("dgi.concurrency:")


# ------------------------------------------------------------------------------ secrets
def test_database_url_from_a_file_is_used_and_never_shown(tmp_path):
    write(tmp_path / "database-url", "postgresql://stalela:s3cret@127.0.0.1:1/ledger\n")
    write(tmp_path / "cloud.toml", f'[database]\nurl_file = "{tmp_path / "database-url"}"\n')
    rows = check(tmp_path, "--config", "cloud.toml")
    assert rows["database.url"]["value"] == "postgresql://stalela:***@127.0.0.1:1/ledger"
    assert rows["database.url"]["origin"] == f"file (url_file {tmp_path / 'database-url'})"
    text = cloud("config", "check", "--config", "cloud.toml", cwd=tmp_path)
    assert text.returncode == 0 and "stalela:***@127.0.0.1:1" in text.stdout and "s3cret" not in text.stdout
    # serve uses it: a server that does not answer there, refused in one line, the password hidden.
    res = cloud("serve", "--config", "cloud.toml", "--data", "data", "--port", "0", cwd=tmp_path)
    assert res.returncode == 1 and "127.0.0.1:1" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout and "Traceback" not in res.stderr


def test_database_url_from_the_credentials_directory(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "database-url", "postgresql://stalela:s3cret@127.0.0.1:1/ledger\n", mode=0o400)
    rows = check(tmp_path, CREDENTIALS_DIRECTORY=str(creds))
    assert rows["database.url"] == {"key": "database.url", "value": "postgresql://stalela:***@127.0.0.1:1/ledger",
                                    "origin": "credential $CREDENTIALS_DIRECTORY/database-url"}
    # A URL set anywhere else wins over the credential; the old variable still counts as env.
    rows = check(tmp_path, CREDENTIALS_DIRECTORY=str(creds),
                 STALELA_CLOUD_DATABASE_URL="postgresql://other:pw2@db.example/x")
    assert rows["database.url"] == {"key": "database.url", "value": "postgresql://other:***@db.example/x",
                                    "origin": "env STALELA_CLOUD_DATABASE_URL"}


def test_environment_beats_the_files_url_file(tmp_path):
    write(tmp_path / "database-url", "postgresql://from:file@127.0.0.1:1/a\n")
    write(tmp_path / "cloud.toml", f'[database]\nurl_file = "{tmp_path / "database-url"}"\n')
    rows = check(tmp_path, "--config", "cloud.toml", STALELA_CLOUD_DATABASE__URL="postgresql://from:env@127.0.0.1:1/b")
    assert rows["database.url"]["value"] == "postgresql://from:***@127.0.0.1:1/b"
    assert rows["database.url"]["origin"] == "env STALELA_CLOUD_DATABASE__URL"


def test_admin_token_from_a_file(tmp_path):
    token = "stla_" + "T" * 43
    write(tmp_path / "admin-token", token + "\n")
    write(tmp_path / "cloud.toml", f'[server]\nadmin_token_file = "{tmp_path / "admin-token"}"\nworkers = 0\n'
                                   'port = 0\n')
    res = cloud("config", "check", "--config", "cloud.toml", cwd=tmp_path)
    assert res.returncode == 0 and token not in res.stdout
    ready, log = serve_until_ready(["--config", "cloud.toml", "--data", "data"], tmp_path)
    assert token not in log
    assert not (tmp_path / "data" / "admin.token").exists()  # the file's token, none generated


@pytest.mark.skipif(BACKEND != "postgresql", reason="a real PostgreSQL run only (STALELA_TEST_CLOUD_DB=postgresql)")
def test_serve_on_postgresql_with_the_url_from_a_file(tmp_path, pg_database):
    # The test server trusts local connections and ignores a password: one is added to be hidden.
    parts = urlsplit(pg_database)
    password = parts.password or "s3cret"
    if parts.password is None and parts.hostname:
        parts = parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{parts.hostname}"
                                      + (f":{parts.port}" if parts.port else ""))
    url = parts.geturl()
    write(tmp_path / "database-url", url + "\n")
    write(tmp_path / "cloud.toml", f'[server]\nport = 0\nworkers = 0\n[database]\nurl_file = "{tmp_path / "database-url"}"\n')
    ready, log = serve_until_ready(["--config", "cloud.toml", "--data", "data"], tmp_path)
    assert password not in log and not (tmp_path / "data" / "cloud.sqlite3").exists()


# ------------------------------------------------------------------------------ template
def test_template_parsed_back_gives_the_defaults(tmp_path):
    res = cloud("config", "template", cwd=tmp_path)
    assert res.returncode == 0
    tables = tomllib.loads(res.stdout)
    assert set(tables) == {"server", "database", "ledger", "dgi"}
    write(tmp_path / "cloud.toml", res.stdout)
    from_template = check(tmp_path, "--config", "cloud.toml")
    defaults = check(tmp_path)
    assert {k: r["value"] for k, r in from_template.items()} == {k: r["value"] for k, r in defaults.items()}
    assert {r["origin"] for r in from_template.values()} == {"file"}  # every key is in the template
    assert {r["origin"] for r in defaults.values()} == {"default"}
    # Every key is commented.
    lines = res.stdout.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line


def test_load_raises_one_problem_per_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path / "cloud.toml", "[server]\nport = -1\nthreads = 0\n"))
    assert [p.split(":")[0] for p in caught.value.problems] == ["server.port", "server.threads"]
