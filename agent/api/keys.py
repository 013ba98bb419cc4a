"""POS API keys: one per terminal, shown once, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
import uuid
from datetime import datetime, timezone

from ..store import keys as store

KEY_PREFIX = "stk_"
# The APIs a key may call: the POS API (/v1), the local e-MCF API (/api, agent/emcf) or both.
APIS = ("v1", "emcf", "both")


def allows(scope: str, api: str) -> bool:
    return scope == api or scope == "both"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(conn: sqlite3.Connection, name: str, api: str = "both") -> str:
    if api not in APIS:
        raise ValueError(f"api is one of {', '.join(APIS)}, not {api!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        store.insert_key(conn, str(uuid.uuid4()), name, hash_key(key), datetime.now(timezone.utc).isoformat(), api)
    except sqlite3.IntegrityError as exc:
        raise ValueError(f"a key named {name!r} already exists") from exc
    return key


def list_keys(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) | {"key_hash": None} for r in store.all_keys(conn)]


def revoke_key(conn: sqlite3.Connection, name: str) -> bool:
    return store.revoke(conn, name, datetime.now(timezone.utc).isoformat())


def lookup(conn: sqlite3.Connection, key: str, api: str = "v1") -> str | None:
    """The key's name if it is valid, not revoked and allowed on `api`."""
    row = store.live_key(conn, hash_key(key))
    return row["name"] if row and allows(row["api"], api) else None


class KeyRing:
    """The lookup the API does on every request, remembered for `ttl` seconds.

    Only the hash of a key is kept (as in the database), and only for keys found valid; an
    unknown key is looked up every time. A key revoked with `stalela agent keys revoke` stops
    working within `ttl` (1 s by default) without a restart. Why: the lookup is a query on the
    event loop on every request, and under load each one waits for the journal writer's thread
    to hand the interpreter back, which costs more than the query.
    """

    def __init__(self, conn: sqlite3.Connection, ttl: float = 1.0, clock=time.monotonic) -> None:
        self._conn = conn
        self._ttl = ttl
        self._clock = clock
        self._valid: dict[str, tuple[str, str, float]] = {}

    def lookup(self, key: str, api: str = "v1") -> str | None:
        """The key's name if it is valid and allowed on `api` ("v1" or "emcf")."""
        found = self._find(key)
        return found[0] if found is not None and allows(found[1], api) else None

    def _find(self, key: str) -> tuple[str, str] | None:
        """(name, api scope) of a valid key."""
        digest = hash_key(key)
        now = self._clock()
        hit = self._valid.get(digest)
        if hit is not None and now - hit[2] < self._ttl:
            return hit[0], hit[1]
        row = store.live_key(self._conn, digest)
        if row is None:
            self._valid.pop(digest, None)
            return None
        if len(self._valid) > 1024:  # a bound, whatever happens: a few terminals per outlet
            self._valid.clear()
        self._valid[digest] = (row["name"], row["api"], now)
        return row["name"], row["api"]
