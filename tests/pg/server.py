"""A PostgreSQL server for the tests, and scratch databases on it.

`admin_url()` answers, in this order: $STALELA_TEST_PG_URL; the server on 127.0.0.1:5432 (user
postgres, trust or peer auth), when one answers; else a throwaway cluster started with the
server binaries on the machine (`initdb`, `pg_ctl`: Debian's postgresql package, which
./dev and .ci/run install), in a temporary folder, on a free port, stopped at exit. With none of
these the tests fail with a message saying what to install: they never skip silently.
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import psycopg

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_admin: str | None = None


class NoServer(RuntimeError):
    pass


def admin_url() -> str:
    """A URL with the right to create databases (found or started once per process)."""
    global _admin
    if _admin is None:
        _admin = os.environ.get("STALELA_TEST_PG_URL") or (LOCAL_URL if _answers(LOCAL_URL) else _throwaway())
    return _admin


def _answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def _binaries() -> Path | None:
    for candidate in [shutil.which("pg_ctl")] + sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True):
        if candidate and Path(candidate).with_name("initdb").exists():
            return Path(candidate).parent
    return None


def _throwaway() -> str:
    bindir = _binaries()
    if bindir is None:
        raise NoServer("no PostgreSQL server answers on 127.0.0.1:5432 and no server binaries (initdb, pg_ctl) "
                       "were found: install Debian's postgresql package (./dev setup does), or set "
                       "STALELA_TEST_PG_URL")
    root = Path(tempfile.mkdtemp(prefix="stalela-pg-"))
    data = root / "data"
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: as `postgres` or `nobody`
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(root, user)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, env=env)
    port = _free_port()
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"],
                   check=True, capture_output=True, env=env)
    atexit.register(_stop, run_as, bindir, data, root)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _stop(run_as: list[str], bindir: Path, data: Path, root: Path) -> None:
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, dbname: str) -> str:
    head, _, tail = url.rpartition("/")
    query = tail.partition("?")[2]
    return f"{head}/{dbname}" + (f"?{query}" if query else "")


def with_schema(url: str, schema: str) -> str:
    """The URL whose sessions see `schema` first (tables are created and read there)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-c search_path={schema}')}"


@contextmanager
def scratch_database() -> Iterator[str]:
    """A database of this test run (stalela_test_<random>), dropped afterwards: its URL."""
    admin = admin_url()
    name = f"stalela_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_schema(database_url: str) -> Iterator[str]:
    """A schema of one test in the run's database: the URL that uses it; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield with_schema(database_url, name)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
