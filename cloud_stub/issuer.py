"""Credential issuer and monotonic counter manager.

One counter per outlet hands out Stalela fiscal numbers: an online seal takes the next one, a
delegated credential reserves the next block. Both happen inside a write transaction, so blocks
and online numbers never overlap, whatever the concurrency.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from fiscal.credential import BlockClosure, DelegatedCredential
from fiscal.signing import key_id, public_key_text

from .errors import Conflict, Invalid, NotFound
from .repository import Tx


@dataclass(frozen=True)
class Issuer:
    """The cloud's Ed25519 signing key. The private half is never returned nor logged."""

    private_key: object
    public_key: str
    key_id: str

    @classmethod
    def from_key(cls, private_key) -> "Issuer":
        public = public_key_text(private_key)
        return cls(private_key, public, key_id(public))

    def __repr__(self) -> str:  # keep the key out of any accidental repr in a log or error
        return f"Issuer(key_id={self.key_id!r})"


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def latest(*moments: str | None) -> str | None:
    """The latest of ISO moments (written in different forms: compared as instants)."""
    known = [m for m in moments if m]
    return iso(max(parse_iso(m.replace("Z", "+00:00")) for m in known)) if known else None


def last_seen(row: dict) -> str | None:
    """When an outlet was last heard from: the latest of its newest upload, its newest
    credential's issue, its MCFs' last contact and its agents' last heartbeat (the columns
    `Tx.outlets_last_contact` reads; the dashboard, the metrics and the outlet list say the same)."""
    return latest(row["last_recorded_at"], row["issued_at"], row["device_last_seen"], row["heartbeat_at"])


def _whole_seconds(moment: datetime) -> datetime:
    # The credential's signed message has a one-second resolution; keep the document equal to it.
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def credential_status(row: dict, now: datetime) -> dict:
    """The public status of a credential row: the document plus its lifecycle."""
    doc = json.loads(row["document"])
    if row["revoked_at"]:
        state = "revoked"
    elif row["closed_at"]:
        state = "closed"
    elif now >= parse_iso(row["not_after"]):
        state = "expired"
    else:
        state = "active"
    return {
        "credential": doc,
        "status": state,
        "issued_at": row["issued_at"],
        "revoked_at": row["revoked_at"],
        "revoke_reason": row["revoke_reason"],
        "closed_last_used": row["closed_last_used"],
        "closed_at": row["closed_at"],
    }


def _credential_id() -> str:
    return "DC-" + secrets.token_hex(6).upper()


def apply_closure(tx: Tx, agent: dict, closure: BlockClosure, now: datetime) -> dict:
    """Record the agent's signed statement of the last number it used; the tail becomes void."""
    row = tx.credential(closure.credential_id)
    if row is None or row["outlet_id"] != agent["outlet_id"]:
        raise NotFound("credential_not_found", f"no credential {closure.credential_id} for this outlet")
    doc = DelegatedCredential.model_validate_json(row["document"])
    if not closure.verify(doc.agent_public_key):
        raise Invalid("bad_closure", "the block closure is not signed by the credential's agent key")
    if not doc.block_start - 1 <= closure.last_used <= doc.block_end:
        raise Invalid("bad_closure", f"last_used {closure.last_used} is outside the block "
                      f"[{doc.block_start}, {doc.block_end}] (use {doc.block_start - 1} for an unused block)")
    if row["closure"] is not None:
        if row["closed_last_used"] != closure.last_used:
            raise Conflict("closure_conflict", f"credential {doc.id} was already closed at "
                           f"{row['closed_last_used']}, not {closure.last_used}")
        return row
    used = tx.numbers_of_authority(doc.id)
    above = sorted(n for n in used if n > closure.last_used)
    if above:
        raise Conflict("closure_conflict", f"numbers above last_used {closure.last_used} were already "
                       f"reconciled for {doc.id} (first: {above[0]})")
    tx.close_credential(doc.id, closure.model_dump_json(), closure.last_used, iso(now))
    return tx.credential(doc.id)


def issue_credential(tx: Tx, issuer: Issuer, agent: dict, outlet: dict, *, block_size: int,
                     validity: timedelta, slack: timedelta, now: datetime,
                     request_id: str | None) -> tuple[dict, bool]:
    """Reserve the outlet's next block and sign a credential for the agent. (row, created)."""
    if request_id is not None:
        existing = tx.credential_by_request(agent["id"], request_id)
        if existing is not None:
            if existing["block_end"] - existing["block_start"] + 1 != block_size:
                raise Conflict("idempotency_conflict",
                               f"request_id {request_id} was used for a block of another size")
            return existing, False
    start = tx.take_numbers(outlet["id"], block_size)
    not_before = _whole_seconds(now - slack)
    fields = dict(
        id=_credential_id(), outlet_id=outlet["id"], merchant_nif=outlet["merchant_nif"],
        agent_public_key=agent["public_key"], block_start=start, block_end=start + block_size - 1,
        not_before=not_before, not_after=_whole_seconds(now + validity),
    )
    cred = DelegatedCredential.issue(issuer.private_key, issuer.key_id, **fields)
    tx.insert_credential(
        id=cred.id, outlet_id=cred.outlet_id, agent_id=agent["id"], request_id=request_id,
        block_start=cred.block_start, block_end=cred.block_end, not_before=iso(cred.not_before),
        not_after=iso(cred.not_after), document=cred.model_dump_json(), issued_at=iso(now),
    )
    return tx.credential(cred.id), True


def revoke(tx: Tx, credential_id: str, reason: str, effective_at: datetime | None,
           now: datetime) -> dict:
    """Revoke a credential from `effective_at` (default now; earlier to void a suspected leak)."""
    row = tx.credential(credential_id)
    if row is None:
        raise NotFound("credential_not_found", f"no credential {credential_id}")
    at = effective_at or now
    if at > now:
        raise Invalid("bad_revocation", "a revocation cannot take effect in the future")
    if row["revoked_at"] is None:
        tx.revoke_credential(credential_id, iso(at), reason)
        row = tx.credential(credential_id)
    return row


def credential_for(tx: Tx, credential_id: str, outlet_id: str | None) -> dict:
    """A credential row, visible only to its own outlet (`outlet_id=None`: admin, any outlet)."""
    row = tx.credential(credential_id)
    if row is None or (outlet_id is not None and row["outlet_id"] != outlet_id):
        # The same answer for "does not exist" and "belongs to someone else": nothing leaks.
        raise NotFound("credential_not_found", f"no credential {credential_id} for this outlet")
    return row


def check_block_size(size: int, maximum: int) -> int:
    if not 1 <= size <= maximum:
        raise Invalid("bad_block_size", f"block_size must be between 1 and {maximum}")
    return size

