"""X, Z and A reports on the agent's journal (see docs/reports.md).

* X: running totals since the last Z; reads only.
* Z: the daily closing. Numbered 1, 2, 3... in the chain `Z:{outlet}`; covers the invoices with
  seq in (previous Z's to_seq, current max seq]; hashed (SHA-256 of the RFC 8785 form of the
  body without `hash` and `signature`), linked to the previous Z by `chain.prev_hash` and signed
  (Ed25519, agent key) over the hex hash. Computed and stored in ONE write transaction, so no
  invoice can be sealed between the sums and the insert. The next X starts from zero.
* A: every article line of the invoices sealed in a period (dates in the outlet's zone).

Functions here take a sqlite3 connection: the daemon passes its writer connection (through
`Journal.run_in_writer`), the CLI its own connection inside a write transaction
(agent/store/tx.py). Their SQL is agent/store/reports.py.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Iterator

from fiscal.canonical import canonical_bytes, sha256_hex
from fiscal.protocol import GENESIS_HASH
from fiscal.signing import b64url, load_public_key, public_key_text, sign, unb64url, verify
from ..store import reports as store
from ..store.bodies import unpack
from fiscal.reports import a_report, aggregate

log = logging.getLogger("stalela.reports")

# Callbacks run after a Z is committed, with the stored Z body: e.g. the device signer clears the
# MCF's "daily report must be made" status (the device engineer / daemon registers it here).
# Exceptions are logged, never propagated: the Z is already sealed.
on_z_closed: list[Callable[[dict[str, Any]], Any]] = []


def z_chain_key(outlet_id: str) -> str:
    return f"Z:{outlet_id}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def last_z(conn: sqlite3.Connection, outlet_id: str) -> sqlite3.Row | None:
    return store.last_in_chain(conn, z_chain_key(outlet_id))


def max_seq(conn: sqlite3.Connection) -> int:
    return store.max_seq(conn)


def iter_sealed(conn: sqlite3.Connection, after_seq: int, upto_seq: int | None = None) -> Iterator[dict]:
    for body in store.sealed_bodies(conn, after_seq, upto_seq):
        yield json.loads(unpack(body))


def health_summary(health: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stable part of `AgentService.health()` that a report records (signer and sync state)."""
    if not health:
        return None
    if health.get("source") == "journal":  # already in this form (offline_health)
        return health
    cred = health.get("credential") or {}
    sync = health.get("sync") or {}
    return {
        "status": health.get("status"), "mode": health.get("mode"),
        "signers": health.get("signers"),
        "credential": {"active": (cred.get("active") or {}).get("id"),
                       "remaining_numbers": cred.get("remaining_numbers")},
        "sync": {k: sync.get(k) for k in ("pending", "quarantined", "last_success", "last_error")},
    }


def offline_health(conn: sqlite3.Connection) -> dict[str, Any]:
    """Health as far as the journal tells it (the CLI has no running signers)."""
    from ..signers.credentials import credential_status
    from ..sync import outbox_status

    cred = credential_status(conn)
    box = outbox_status(conn)
    return {"status": None, "mode": None, "signers": None, "source": "journal",
            "credential": {"active": (cred["active"] or {}).get("id"), "remaining_numbers": cred["remaining"]},
            "sync": {"pending": box["pending"], "quarantined": box["quarantined"], "last_success": None,
                     "last_error": None}}


def _identity_fields(identity) -> dict[str, Any]:
    return {"outlet_id": identity.outlet_id, "merchant_nif": identity.merchant_nif,
            "merchant_name": identity.merchant_name, "isf": identity.isf}


def _stamp(now: datetime | None, tz) -> str:
    now = now or _now()
    return (now.astimezone(tz) if tz is not None else now).isoformat()


def x_report(conn: sqlite3.Connection, identity, health: dict | None, now: datetime | None = None,
             tz=None) -> dict:
    last = last_z(conn, identity.outlet_id)
    after = last["to_seq"] if last else 0
    upto = max(max_seq(conn), after)
    return {
        "kind": "X", "id": str(uuid.uuid4()), **_identity_fields(identity),
        "created_at": _stamp(now, tz),
        "since_z": last["number"] if last else None,
        "from_seq": after + 1, "to_seq": upto,
        "totals": aggregate(iter_sealed(conn, after, upto)),
        "health": health_summary(health),
    }


def report_hash(body: dict[str, Any]) -> str:
    view = {k: v for k, v in body.items() if k not in ("hash", "signature")}
    return sha256_hex(canonical_bytes(view))


def close_z(conn: sqlite3.Connection, identity, key, health: dict | None, now: datetime | None = None,
            tz=None) -> dict:
    """Compute, seal and store the next Z. Call inside a write transaction (store.tx.immediate)."""
    now = now or _now()
    last = last_z(conn, identity.outlet_id)
    after = last["to_seq"] if last else 0
    upto = max(max_seq(conn), after)
    body = {
        "kind": "Z", "id": str(uuid.uuid4()), "number": (last["number"] + 1) if last else 1,
        **_identity_fields(identity), "created_at": _stamp(now, tz),
        "from_seq": after + 1, "to_seq": upto,
        "totals": aggregate(iter_sealed(conn, after, upto)),
        "health": health_summary(health),
        "chain": {"key": z_chain_key(identity.outlet_id), "prev_hash": last["hash"] if last else GENESIS_HASH},
        "signer_public_key": public_key_text(key),
    }
    digest = report_hash(body)
    body["hash"] = digest
    body["signature"] = b64url(sign(key, digest.encode("ascii")))
    store.insert_z(conn, report_id=body["id"], number=body["number"], chain_key=body["chain"]["key"],
                   from_seq=body["from_seq"], to_seq=body["to_seq"], created_at=body["created_at"],
                   body_json=json.dumps(body, ensure_ascii=False, separators=(",", ":")), hash_hex=digest,
                   prev_hash=body["chain"]["prev_hash"])
    return body


def verify_report(body: dict[str, Any]) -> list[str]:
    """Problems with one sealed Z body on its own (hash and signature); empty = valid."""
    problems = []
    if body.get("hash") != report_hash(body):
        problems.append("content does not match its hash (the report was altered)")
    try:
        ok = verify(load_public_key(body["signer_public_key"]), unb64url(body.get("signature") or ""),
                    str(body.get("hash")).encode("ascii"))
    except (KeyError, ValueError):
        ok = False
    if not ok:
        problems.append("signature does not verify with the agent key")
    return problems


def notify_z_closed(body: dict[str, Any]) -> None:
    for callback in list(on_z_closed):
        try:
            callback(body)
        except Exception:
            log.exception("on_z_closed callback failed", extra={"event": "report.z_callback_failed"})


# ------------------------------------------------------------------------------ reading


def get_report(conn: sqlite3.Connection, report_id: str) -> dict | None:
    text = store.report_body(conn, report_id)
    return json.loads(text) if text is not None else None


def list_reports(conn: sqlite3.Connection, kind: str | None = None, limit: int = 100) -> list[dict]:
    return [json.loads(text) for text in store.recent_bodies(conn, kind, limit)]


# ------------------------------------------------------------------------------ A report


class BadPeriod(ValueError):
    pass


# The dates a period may name. The bounds keep the arithmetic on them (the day after `to`, a day
# of margin either side, the zone's offset) inside what `datetime` can represent: 0001-01-01 or
# 9999-12-31 would overflow it. No invoice predates 1970 and none will be sealed after 9998.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)


def period_bounds(start: str | None, end: str | None, tz) -> tuple[datetime, datetime]:
    """`from`/`to` dates (YYYY-MM-DD) in the outlet's zone, both inclusive; default: today."""
    try:
        today = datetime.now(tz).date()
        lo_day = date.fromisoformat(start) if start else (date.fromisoformat(end) if end else today)
        hi_day = date.fromisoformat(end) if end else (lo_day if start else today)
    except ValueError:
        raise BadPeriod("from and to are dates: YYYY-MM-DD") from None
    if hi_day < lo_day:
        raise BadPeriod("`to` is before `from`")
    if lo_day < FIRST_DAY or hi_day > LAST_DAY:
        raise BadPeriod(f"from and to are dates between {FIRST_DAY} and {LAST_DAY}")
    return datetime.combine(lo_day, time(), tz), datetime.combine(hi_day + timedelta(days=1), time(), tz)


def invoices_in_period(conn: sqlite3.Connection, lo: datetime, hi: datetime) -> Iterator[dict]:
    # sealed_at is the local ISO time with offset: a text pre-filter with a day of margin, then the
    # exact comparison on the parsed timestamp.
    lo_txt = (lo - timedelta(days=1)).date().isoformat()
    hi_txt = (hi + timedelta(days=1)).date().isoformat()
    for body in store.sealed_bodies_between(conn, lo_txt, hi_txt):
        inv = json.loads(unpack(body))
        if lo <= datetime.fromisoformat(inv["security"]["timestamp"]) < hi:
            yield inv


def a_report_for(conn: sqlite3.Connection, identity, tz, start: str | None, end: str | None,
                 now: datetime | None = None) -> dict:
    lo, hi = period_bounds(start, end, tz)
    rep = a_report(invoices_in_period(conn, lo, hi))
    return {"kind": "A", **_identity_fields(identity), "created_at": _stamp(now, tz),
            "from": lo.isoformat(), "to": hi.isoformat(), **rep}


# ------------------------------------------------------------------------------ scheduling


def z_due(conn: sqlite3.Connection, outlet_id: str, now_local: datetime, z_time: str) -> bool:
    """True when the configured closing time of today has passed, no Z was made since it, and
    invoices were sealed since the last Z."""
    hh, mm = (int(x) for x in z_time.split(":"))
    due_at = now_local.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if now_local < due_at:
        return False
    last = last_z(conn, outlet_id)
    if last is not None and datetime.fromisoformat(last["created_at"]) >= due_at:
        return False
    after = last["to_seq"] if last else 0
    return store.sealed_after(conn, after)
