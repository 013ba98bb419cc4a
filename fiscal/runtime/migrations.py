"""One schema-migration runner for the agent's journal and the cloud's ledger (both SQLite).

A migration is (version, name, SQL script or callable). Pending ones run in list order, each in
its own `BEGIN IMMEDIATE` transaction together with its row in `schema_migrations`, so a crash
leaves either all of a migration or none of it, and two processes opening the same file at once
cannot both apply one (the second re-reads the table under the write lock and skips it).

A database that records a version this code does not know was written by newer software:
`SchemaTooNew` is raised before anything is changed, since running older code on it could
corrupt what the newer schema means.

The connection must be in autocommit mode (`isolation_level=None`): the runner issues its own
BEGIN/COMMIT, which Python's implicit transactions would otherwise interleave with.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable, Iterable, Union

TABLE = "schema_migrations"

Step = Union[str, Callable[[sqlite3.Connection], None]]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Step


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of the software than this one."""

    def __init__(self, unknown: list[str], newest_known: int) -> None:
        self.unknown = unknown
        super().__init__(
            f"this database was upgraded by a newer version of Stalela (it records migration(s) "
            f"{', '.join(unknown)}; this version knows up to {newest_known}): install that version "
            "again, or open a copy made before the upgrade")


def as_migrations(items: Iterable[Migration | tuple[int, str, Step]]) -> list[Migration]:
    out = [m if isinstance(m, Migration) else Migration(*m) for m in items]
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {versions}")
    return out


def statements(script: str) -> list[str]:
    """Split a script into statements. executescript() would COMMIT the open transaction; this
    keeps trigger bodies (BEGIN ... END;) whole and allows the last statement's ';' to be left out."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if sqlite3.complete_statement(text):
            out.append(text)
            buf = []
    rest = "\n".join(buf).strip()
    if rest:
        if not sqlite3.complete_statement(rest + ";"):
            raise ValueError("incomplete SQL statement in a migration")
        out.append(rest)
    return out


def migrate(conn: sqlite3.Connection, migrations: Iterable[Migration | tuple[int, str, Step]], *,
            legacy_name_table: str | None = None) -> list[str]:
    """Apply the pending migrations in order; returns the names applied now.

    `legacy_name_table`: a table of an older layout that recorded migrations by name only (the
    agent's `_migrations`); its rows are carried into `schema_migrations` once, then it is dropped.
    """
    todo = as_migrations(migrations)
    # Reads first: an up-to-date database is opened without taking the write lock (a CLI command
    # beside the running daemon, or a reader without write permission on the file).
    columns = _columns(conn, TABLE)
    if "name" not in columns or (legacy_name_table and _columns(conn, legacy_name_table)):
        _ensure_table(conn, todo, legacy_name_table)
    _refuse_newer(conn, todo)
    done = set(recorded(conn))
    applied = []
    for m in todo:
        if m.version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _rows(conn, f"SELECT 1 FROM {TABLE} WHERE version = ?", (m.version,)):
                conn.execute("ROLLBACK")  # recorded already, possibly by another process just now
                continue
            _apply(conn, m.apply)
            conn.execute(f"INSERT INTO {TABLE}(version, name, applied_at) VALUES (?, ?, datetime('now'))",
                         (m.version, m.name))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(m.name)
    return applied


def recorded(conn: sqlite3.Connection) -> dict[int, str]:
    """Version -> name of every migration the database records."""
    return {row[0]: row[1] for row in _rows(conn, f"SELECT version, name FROM {TABLE} ORDER BY version")}


def _rows(conn: sqlite3.Connection, sql: str, args: tuple = ()) -> list[tuple]:
    """Plain tuples whatever row factory the caller's connection uses (the cloud's gives dicts)."""
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(sql, args).fetchall()


def _apply(conn: sqlite3.Connection, step: Step) -> None:
    if callable(step):
        step(conn)
        return
    for statement in statements(step):
        conn.execute(statement)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in _rows(conn, f"PRAGMA table_info({table})")]


def _ensure_table(conn: sqlite3.Connection, todo: list[Migration], legacy_name_table: str | None) -> None:
    """Create `schema_migrations`, or bring an older layout of the records to it (in place)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = _columns(conn, TABLE)
        if not columns:
            conn.execute(f"CREATE TABLE {TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '',"
                         " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        elif "name" not in columns:
            # The cloud's layout before this runner: versions only. Name the known ones.
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN name TEXT NOT NULL DEFAULT ''")
            for m in todo:
                conn.execute(f"UPDATE {TABLE} SET name = ? WHERE version = ?", (m.name, m.version))
        if legacy_name_table and _columns(conn, legacy_name_table):
            _adopt_names(conn, todo, legacy_name_table)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _adopt_names(conn: sqlite3.Connection, todo: list[Migration], table: str) -> None:
    by_name = {m.name: m for m in todo}
    rows = _rows(conn, f"SELECT name, applied_at FROM {table}")
    unknown = sorted(row[0] for row in rows if row[0] not in by_name)
    if unknown:
        raise SchemaTooNew(unknown, max((m.version for m in todo), default=0))
    for name, applied_at in rows:
        conn.execute(f"INSERT OR IGNORE INTO {TABLE}(version, name, applied_at) VALUES (?, ?, ?)",
                     (by_name[name].version, name, applied_at))
    conn.execute(f"DROP TABLE {table}")


def _refuse_newer(conn: sqlite3.Connection, todo: list[Migration]) -> None:
    known = {m.version for m in todo}
    unknown = [f"{v} ({name})" if name else str(v) for v, name in recorded(conn).items() if v not in known]
    if unknown:
        raise SchemaTooNew(unknown, max(known, default=0))
