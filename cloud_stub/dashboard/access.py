"""Who may read the dashboard: operators (the admin token) and merchants (a read-only token per
merchant), each exchanging the token once for a session.

Sessions live in the database (`dashboard_sessions`), not in a cookie signed with a key derived
from the admin token: every instance sharing the database knows them, a logout ends the session
on all of them at once (a signed cookie stays valid until it expires), and a merchant's session
ends with its token. The cookie holds 256 random bits; the database only their SHA-256.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import Invalid, NotFound
from ..issuer import iso
from ..registry import secret_hash
from ..repository import Repository

MERCHANT_TOKEN_PREFIX = "stlm_"
OPERATOR, MERCHANT = "operator", "merchant"


@dataclass(frozen=True)
class Viewer:
    """The person behind a session: an operator sees every outlet and may act; a merchant sees
    its own outlets only, and may not act."""

    role: str
    merchant_nif: str | None
    csrf: str
    session_hash: str

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


def create_merchant_token(store: Repository, merchant_nif: str, ttl: timedelta, now: datetime) -> dict:
    """A read-only dashboard token for a merchant's staff: shown once, only its hash kept."""
    if ttl <= timedelta(0):
        raise Invalid("bad_ttl", "the token lifetime must be positive")
    token = MERCHANT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = iso(now + ttl)
    with store.write() as tx:
        row = tx.merchant(merchant_nif)
        if row is None:
            raise NotFound("merchant_not_found", f"no merchant with NIF {merchant_nif}")
        tx.insert_merchant_token(secret_hash(token), merchant_nif, iso(now), expires_at)
    return {"merchant_nif": row["nif"], "token": token, "expires_at": expires_at}


def revoke_merchant_tokens(store: Repository, merchant_nif: str, now: datetime) -> int:
    """Revoke every dashboard token of a merchant (staff left, a token leaked): their sessions
    end with them. The number revoked."""
    with store.write() as tx:
        if tx.merchant(merchant_nif) is None:
            raise NotFound("merchant_not_found", f"no merchant with NIF {merchant_nif}")
        return tx.revoke_merchant_tokens(merchant_nif, iso(now))


def csrf_token(session_id: str) -> str:
    """The form token of a session: derived from its secret (nothing more to store), and not
    the secret itself (the token is written into every page)."""
    return hashlib.sha256(b"stalela-dashboard-csrf:" + session_id.encode("ascii")).hexdigest()


def log_in(store: Repository, token: str, admin_token: str, ttl: timedelta, now: datetime) -> tuple[str, str] | None:
    """Exchange a token for a new session: (session id for the cookie, role), or None when the
    token is neither the admin token nor a live merchant token (the caller says no more)."""
    if not (token.isascii() and token.isprintable()):
        return None
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        role, nif, token_hash = OPERATOR, None, None
    else:
        token_hash = secret_hash(token)  # looked up by its hash: no timing on the secret itself
        with store.read() as tx:
            row = tx.live_merchant_token(token_hash, iso(now))
        if row is None:
            return None
        role, nif = MERCHANT, row["merchant_nif"]
    session_id = secrets.token_urlsafe(32)
    with store.write() as tx:
        tx.purge_sessions(iso(now))  # the expired ones go as new ones come
        tx.insert_session(secret_hash(session_id), role, nif, token_hash, iso(now), iso(now + ttl))
    return session_id, role


def viewer(store: Repository, session_id: str, now: datetime) -> Viewer | None:
    """The viewer of a live session (None: unknown, expired, logged out, token revoked)."""
    if not session_id or len(session_id) > 100 or not (session_id.isascii() and session_id.isprintable()):
        return None
    id_hash = secret_hash(session_id)
    with store.read() as tx:
        row = tx.live_session(id_hash, iso(now))
    if row is None:
        return None
    return Viewer(row["role"], row["merchant_nif"], csrf_token(session_id), id_hash)


def log_out(store: Repository, viewer: Viewer) -> None:
    with store.write() as tx:
        tx.delete_session(viewer.session_hash)
