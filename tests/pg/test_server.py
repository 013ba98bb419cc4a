"""The throwaway server a machine without PostgreSQL gets for the tests (tests/pg/server.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.pg import server
from tests.support import ROOT

SCRIPT = """
import glob, psycopg
from tests.pg import server
url = server._throwaway()
with psycopg.connect(url) as conn:
    print(conn.execute("SELECT current_setting('data_directory') AS d").fetchone()[0])
"""


def test_a_throwaway_server_starts_answers_and_is_removed():
    if server._binaries() is None:
        pytest.skip("no PostgreSQL server binaries here (this machine's tests use the server on 127.0.0.1:5432)")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    data_dir = done.stdout.strip()
    assert data_dir.startswith("/") and "stalela-pg-" in data_dir
    # Stopped and deleted when the process that started it exited.
    assert not os.path.exists(data_dir)


def test_with_schema_keeps_other_parameters():
    url = server.with_schema("postgresql://u@h:5432/db?sslmode=disable", "t_1")
    assert url == "postgresql://u@h:5432/db?sslmode=disable&options=-c%20search_path%3Dt_1"
    assert server.with_database("postgresql://u@h:5432/postgres?sslmode=disable", "x") == \
        "postgresql://u@h:5432/x?sslmode=disable"
