"""The device signer's intents (table device_intents, migration 0004_device).

An intent is written durably before C0h and removed in the transaction that stores the device's
answer (store/repository.py `settle_intent`); one left behind after a crash is resolved against
the device before anything else is sent to it (agent/device/recovery.py).
"""
from __future__ import annotations

import sqlite3


def record_intent(conn: sqlite3.Connection, request_id: str, fingerprint: str, fn: str, job_json: str,
                  started_at: str) -> None:
    conn.execute("INSERT INTO device_intents(request_id, fingerprint, fn, job, started_at) VALUES (?, ?, ?, ?, ?)",
                 (request_id, fingerprint, fn, job_json, started_at))


def intent_job(conn: sqlite3.Connection, request_id: str) -> str | None:
    """The job (JSON) recorded with the intent of `request_id`, if there is one."""
    row = conn.execute("SELECT job FROM device_intents WHERE request_id = ?", (request_id,)).fetchone()
    return row["job"] if row is not None else None


def set_intent_job(conn: sqlite3.Connection, request_id: str, job_json: str) -> None:
    conn.execute("UPDATE device_intents SET job = ? WHERE request_id = ?", (job_json, request_id))


def intents(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every intent left (every column), oldest first."""
    return conn.execute("SELECT * FROM device_intents ORDER BY started_at").fetchall()


def intent_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM device_intents").fetchone()[0]


def delete_intent(conn: sqlite3.Connection, request_id: str) -> None:
    conn.execute("DELETE FROM device_intents WHERE request_id = ?", (request_id,))
