"""Transactions on a journal connection: the only place outside the other store modules that says
BEGIN, COMMIT or ROLLBACK.

Connections are opened in autocommit mode (`isolation_level=None`, agent/store/db.py), so every
transaction is begun and ended by hand; the callers decide what is committed together, these
functions only say it. `BEGIN IMMEDIATE` takes SQLite's write lock at once, which is what
serializes the daemon's writer, the sealing process and the CLI.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator


def begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def begin_read(conn: sqlite3.Connection) -> None:
    """A deferred transaction: every read until COMMIT sees one snapshot."""
    conn.execute("BEGIN")


def commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def rollback(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back after a failure whose error is the one to report: SQLite may already have rolled
    the transaction back itself (e.g. on an I/O error), and that must not hide the first error."""
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def savepoint(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(f"SAVEPOINT {name}")


def release(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(f"RELEASE {name}")


def rollback_to(conn: sqlite3.Connection, name: str) -> None:
    """Undo everything since the savepoint `name` and drop it: the transaction goes on."""
    conn.execute(f"ROLLBACK TO {name}")
    conn.execute(f"RELEASE {name}")


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`with immediate(conn):` one write transaction: committed when the block ends, rolled back
    (and the error raised again) when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
