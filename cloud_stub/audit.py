"""Gap detection: numbers of a delegated block that were neither reconciled nor declared unused.

A number `n` of a credential's block is a **gap** when it is not in the ledger, not voided by
the block's closure, and either
  * a later number of the outlet's delegated chain is known (accepted, or rejected for a chain
    break with a valid signature): the chain is ordered, so `n` should have come first; or
  * the credential is settled (closed, expired or revoked) since longer than the grace period.
Gaps are flagged once (a flag lists number ranges); a flag whose numbers all arrive later or are
voided by a late closure is marked resolved, never deleted.

`flag_numbers` raises the other flags: invoices refused for the tax rules under a valid seal, and
invoices of a device the operator has not bound to the outlet.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from .issuer import iso, parse_iso
from .repository import Tx


def ranges(numbers: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7] → [[1, 3], [7, 7]]"""
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def expand(spans: list[list[int]]) -> set[int]:
    return {n for lo, hi in spans for n in range(lo, hi + 1)}


def _settled_at(row: dict) -> datetime:
    moments = [parse_iso(row["not_after"])]
    for key in ("closed_at", "revoked_at"):
        if row[key]:
            moments.append(parse_iso(row[key]))
    return min(moments)


def audit_outlet(tx: Tx, outlet_id: str, now: datetime, grace: timedelta) -> list[int]:
    """Flag new gaps and resolve healed ones for one outlet. Returns the ids of new flags."""
    open_gaps = [f for f in tx.flags(outlet_id, open_only=True) if f["reason"] == "gap"]
    already = set().union(*(expand(json.loads(f["numbers"])) for f in open_gaps)) if open_gaps else set()
    high = tx.highest_delegated_number(outlet_id)
    new_flags = []
    for row in tx.credentials_to_audit(outlet_id):
        last = row["closed_last_used"] if row["closed_last_used"] is not None else row["block_end"]
        settled = _settled_at(row) + grace <= now
        limit = last if settled else min(last, high - 1)
        # Numbers are unique per authority, so a full count over the range means nothing is missing.
        if limit >= row["block_start"] and tx.count_numbers_of_authority(
                row["id"], row["block_start"], limit) != limit - row["block_start"] + 1:
            seen = tx.numbers_of_authority(row["id"])
            missing = [n for n in range(row["block_start"], limit + 1) if n not in seen and n not in already]
            if missing:
                why = ("settled (closed, expired or revoked) without them" if settled
                       else f"later number {high} arrived first")
                new_flags.append(tx.insert_flag(
                    outlet_id, "gap", row["id"], ranges(missing),
                    f"{len(missing)} number(s) of credential {row['id']} never reconciled: {why}", iso(now)))
                already.update(missing)
        if settled:
            tx.mark_audited(row["id"], iso(now))
    _resolve_healed(tx, open_gaps, now)
    return new_flags


def _resolve_healed(tx: Tx, open_gaps: list[dict], now: datetime) -> None:
    for flag in open_gaps:
        cred = tx.credential(flag["credential_id"]) if flag["credential_id"] else None
        if cred is None:
            continue
        numbers = expand(json.loads(flag["numbers"]))
        seen = tx.numbers_of_authority(cred["id"])
        void_above = cred["closed_last_used"]
        left = [n for n in numbers if n not in seen and (void_above is None or n <= void_above)]
        if not left:
            tx.resolve_flag(flag["id"], iso(now), "numbers reconciled later or voided by a closure")


def flag_numbers(tx: Tx, outlet_id: str, reason: str, authority_id: str, numbers: list[int], detail: str,
                 now: datetime, credential_id: str | None = None) -> int | None:
    """Flag invoices the cloud refused or holds apart (`reason`: the rejection's, or
    `unregistered_device`): the id of the new flag, or None when every number is already in an
    open flag of the same reason and authority (an agent resending a batch raises no new flag), or
    when they were added to the open flag of an unregistered device.
    With no numbers (an online seal refused before it took one) the detail tells attempts apart."""
    open_flags = tx.open_flags_of(outlet_id, reason, authority_id)
    if not numbers:
        if any(f["detail"] == detail for f in open_flags):
            return None
        return tx.insert_flag(outlet_id, reason, credential_id, [], detail, iso(now), authority_id)
    seen = set().union(*(expand(json.loads(f["numbers"])) for f in open_flags)) if open_flags else set()
    new = sorted(set(numbers) - seen)
    if not new:
        return None
    if reason in MERGED_REASONS and open_flags:
        # One open flag per device: its numbers grow with every batch instead of a flag per batch.
        flag = open_flags[0]
        tx.set_flag_numbers(flag["id"], ranges(sorted(expand(json.loads(flag["numbers"])) | set(new))))
        return None
    return tx.insert_flag(outlet_id, reason, credential_id, ranges(new), detail, iso(now), authority_id)


# Reasons with one open flag per authority (a device stored apart), not one per event.
MERGED_REASONS = frozenset({"unregistered_device"})


def flag_view(row: dict) -> dict:
    return {"id": row["id"], "outlet_id": row["outlet_id"], "reason": row["reason"],
            "credential_id": row["credential_id"], "authority_id": row.get("authority_id"),
            "numbers": json.loads(row["numbers"]),
            "detail": row["detail"], "created_at": row["created_at"],
            "resolved_at": row["resolved_at"], "resolution": row["resolution"]}
