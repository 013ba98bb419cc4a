"""Registry: merchants, outlets, one-time enrollment tokens, agents and MCF devices."""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta

from fiscal.signing import load_public_key, weak_public_key

from .config import TIME_ZONES
from .errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from .issuer import iso, parse_iso
from .repository import Tx

# Matched with fullmatch: `$` would also match before a trailing "\n" ("KIN-01\n").
OUTLET_ID = re.compile(r"[A-Z0-9-]{1,40}")
NIF = re.compile(r"[A-Za-z0-9-]{1,32}")
MID = re.compile(r"[A-Za-z0-9-]{1,32}")
DEVICE_STATUSES = ("active", "suspended", "retired")


def secret_hash(secret: str) -> str:
    """How tokens are stored: SHA-256 hex. Tokens are 256-bit random, so no salt is needed."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def add_merchant(tx: Tx, nif: str, name: str, taxpayer: dict, now: datetime) -> dict:
    if not NIF.fullmatch(nif):
        raise Invalid("bad_nif", "a NIF is 1-32 letters, digits or '-'")
    if tx.merchant(nif) is not None:
        raise Conflict("merchant_exists", f"merchant {nif} already exists")
    tx.insert_merchant(nif, name, taxpayer, iso(now))
    return merchant_view(tx.merchant(nif))


def merchant_view(row: dict) -> dict:
    return {"nif": row["nif"], "name": row["name"], "taxpayer": json.loads(row["taxpayer"]),
            "created_at": row["created_at"]}


def add_outlet(tx: Tx, outlet_id: str, merchant_nif: str, name: str, time_zone: str,
               isf: str | None, now: datetime) -> dict:
    if not OUTLET_ID.fullmatch(outlet_id):
        raise Invalid("bad_outlet_id", "an outlet id is 1-40 characters among A-Z, 0-9 and '-'")
    if time_zone not in TIME_ZONES:
        raise Invalid("bad_time_zone", f"time zone must be one of {', '.join(TIME_ZONES)}")
    if tx.merchant(merchant_nif) is None:
        raise NotFound("merchant_not_found", f"no merchant with NIF {merchant_nif}")
    if tx.outlet(outlet_id) is not None:
        raise Conflict("outlet_exists", f"outlet {outlet_id} already exists")
    tx.insert_outlet(outlet_id, merchant_nif, name, time_zone, isf, iso(now))
    return outlet_view(tx.outlet(outlet_id))


def outlet_view(row: dict) -> dict:
    return {
        "id": row["id"], "name": row["name"], "time_zone": row["time_zone"], "isf": row["isf"],
        "merchant_nif": row["merchant_nif"], "merchant_name": row["merchant_name"],
        "taxpayer": json.loads(row["taxpayer"]),
    }


def get_outlet(tx: Tx, outlet_id: str) -> dict:
    row = tx.outlet(outlet_id)
    if row is None:
        raise NotFound("outlet_not_found", f"no outlet {outlet_id}")
    return row


def create_token(tx: Tx, outlet_id: str, ttl: timedelta, now: datetime) -> tuple[str, str]:
    """A one-time enrollment token for an outlet: (token, expires_at). Only its hash is kept."""
    get_outlet(tx, outlet_id)
    if ttl <= timedelta(0):
        raise Invalid("bad_ttl", "the token lifetime must be positive")
    token = "stle_" + secrets.token_urlsafe(32)
    expires_at = iso(now + ttl)
    tx.insert_token(secret_hash(token), outlet_id, iso(now), expires_at)
    return token, expires_at


def enroll(tx: Tx, token: str, agent_public_key: str, label: str, now: datetime) -> tuple[dict, str, dict]:
    """Redeem a one-time token: (agent row, agent API token shown once, outlet row).

    One active agent per outlet: a new enrollment (with a fresh token, which only an admin can
    create) retires the previous agent, whose API token stops working.
    """
    try:
        load_public_key(agent_public_key)
    except ValueError:
        raise Invalid("bad_public_key", "agent_public_key must be a base64url raw Ed25519 public key") from None
    if weak_public_key(agent_public_key):
        raise Invalid("bad_public_key", "agent_public_key is a small-order or non-canonical Ed25519 point: "
                      "signatures under it prove nothing; generate a new key")
    token_hash = secret_hash(token)
    row = tx.token(token_hash)
    # One answer for unknown, used and expired tokens would hide the reason from a technician;
    # the token is a 256-bit secret, so telling them apart reveals nothing useful to a guesser.
    if row is None:
        raise Unauthorized("bad_enrollment_token", "unknown enrollment token")
    if row["used_at"] is not None:
        raise Unauthorized("bad_enrollment_token", "this enrollment token was already used")
    if parse_iso(row["expires_at"]) <= now:
        raise Unauthorized("bad_enrollment_token", "this enrollment token has expired")
    agent_id = "AG-" + secrets.token_hex(6).upper()
    if not tx.use_token(token_hash, iso(now), agent_id):
        raise Unauthorized("bad_enrollment_token", "this enrollment token was already used")
    retired = tx.retire_agents(row["outlet_id"], iso(now))
    api_token = "stla_" + secrets.token_urlsafe(32)
    tx.insert_agent(agent_id, row["outlet_id"], agent_public_key, secret_hash(api_token), label, iso(now))
    agent = {"id": agent_id, "outlet_id": row["outlet_id"], "public_key": agent_public_key,
             "label": label, "retired": retired}
    return agent, api_token, tx.outlet(row["outlet_id"])


def authenticate(tx: Tx, api_token: str) -> dict | None:
    return tx.agent_by_token(secret_hash(api_token))


def bind_device(tx: Tx, outlet_id: str, mid: str, nif: str, status: str, firmware: dict, now: datetime,
                bound_by: str) -> tuple[dict, bool]:
    """Bind (or refresh) an MCF for an outlet: the operator's act (admin token, CLI, or a
    provisioning token it issued for this outlet). (device, created).

    A device of another taxpayer is refused. Bindings are per outlet: the same MID bound by
    another tenant neither blocks this one nor is revealed to it; bound to another outlet of the
    same merchant, it must be unbound there first.
    """
    if not MID.fullmatch(mid):
        raise Invalid("bad_mid", "a MID is 1-32 letters, digits or '-'")
    if status not in DEVICE_STATUSES:
        raise Invalid("bad_status", f"status must be one of {', '.join(DEVICE_STATUSES)}")
    outlet = get_outlet(tx, outlet_id)
    if nif != outlet["merchant_nif"]:
        raise Conflict("nif_mismatch", f"device {mid} reports NIF {nif}, but outlet {outlet_id} "
                       f"belongs to merchant {outlet['merchant_nif']}")
    # Two binds of one MID to two outlets of the merchant hold two different outlet locks: the
    # merchant's lock makes the second one see the first's binding.
    tx.lock_merchant(outlet["merchant_nif"])
    elsewhere = tx.bound_elsewhere(outlet["merchant_nif"], mid, outlet_id)
    if elsewhere is not None:
        raise Conflict("device_bound_elsewhere", f"device {mid} is bound to outlet {elsewhere} of the same "
                       "merchant: unbind it there first")
    existing = tx.device(outlet_id, mid)
    _settle_review(tx, outlet_id, mid, now, "confirmed by the operator")
    if existing is not None and existing["unbound_at"] is None:
        tx.update_device(outlet_id, mid, status, firmware, iso(now))
        if existing["bound_by"] == LEGACY_BINDER:
            tx.confirm_device(outlet_id, mid, bound_by)
        return device_view(tx.device(outlet_id, mid)), False
    tx.bind_device(outlet_id, mid, nif, status, firmware, iso(now), bound_by)
    return device_view(tx.device(outlet_id, mid)), True


LEGACY_BINDER = "agent"  # `bound_by` of the bindings agents made before schema version 2


def _settle_review(tx: Tx, outlet_id: str, mid: str, now: datetime, resolution: str) -> None:
    """Resolve the review flag of a binding an agent made before version 2: the operator acted."""
    for flag in tx.open_flags_of(outlet_id, "device_review", mid):
        tx.resolve_flag(flag["id"], iso(now), resolution)


def unbind_device(tx: Tx, outlet_id: str, mid: str, now: datetime) -> dict:
    """Unbind a MID from an outlet (its record stays, with `unbound_at`): its later invoices
    are flagged `unregistered_device`."""
    get_outlet(tx, outlet_id)
    if not tx.unbind_device(outlet_id, mid, iso(now)):
        raise NotFound("device_not_found", f"no device {mid} bound to outlet {outlet_id}")
    _settle_review(tx, outlet_id, mid, now, "unbound by the operator")
    return device_view(tx.device(outlet_id, mid))


def create_provisioning_token(tx: Tx, outlet_id: str, ttl: timedelta, now: datetime) -> tuple[str, str]:
    """A token that lets a technician bind one MCF to this outlet: (token, expires_at).
    Only its hash is kept. It binds the first MID it is used with, and only that one (refreshing
    it again is fine) until it expires."""
    get_outlet(tx, outlet_id)
    if ttl <= timedelta(0):
        raise Invalid("bad_ttl", "the token lifetime must be positive")
    token = PROVISIONING_PREFIX + secrets.token_urlsafe(32)
    expires_at = iso(now + ttl)
    tx.insert_provisioning_token(secret_hash(token), outlet_id, iso(now), expires_at)
    return token, expires_at


PROVISIONING_PREFIX = "stlp_"


def provisioning_outlet(tx: Tx, token: str, now: datetime) -> dict | None:
    """The row of a live provisioning token (None: unknown or expired)."""
    row = tx.provisioning_token(secret_hash(token))
    if row is None or parse_iso(row["expires_at"]) <= now:
        return None
    return row


def provision_with_token(tx: Tx, token_row: dict, mid: str, nif: str, status: str, firmware: dict,
                         now: datetime) -> tuple[dict, bool]:
    if MID.match(mid) and not tx.use_provisioning_token(token_row["token_hash"], mid, iso(now)):
        raise Forbidden("provisioning_token_used", "this provisioning token already bound another device; "
                        "ask the operator for a new one")
    return bind_device(tx, token_row["outlet_id"], mid, nif, status, firmware, now,
                       bound_by="provisioning-token")


def device_view(row: dict) -> dict:
    return {"mid": row["mid"], "nif": row["nif"], "outlet_id": row["outlet_id"], "status": row["status"],
            "firmware": json.loads(row["firmware"]), "provisioned_at": row["provisioned_at"],
            "last_seen": row["last_seen"], "bound": row["unbound_at"] is None, "bound_by": row["bound_by"],
            "unbound_at": row["unbound_at"]}
