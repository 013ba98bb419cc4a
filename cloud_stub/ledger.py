"""The fiscal ledger: append-only, hash-chained per outlet, and the queries built on it.

Each entry's `ledger_hash = SHA-256(RFC 8785 {prev_ledger_hash, outlet_id, seq, recorded_at,
mode, authority_id, fiscal_number, invoice_hash})`, and `invoice_hash` is the invoice's own chain
hash (`seal.chain_hash`, which covers every field but `sync`). Editing, inserting or deleting any
entry, or any byte of a stored invoice, breaks `verify()`.
"""
from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from json.encoder import encode_basestring
from zoneinfo import ZoneInfo

from fiscal.canonical import canonical_bytes, sha256_hex
from fiscal.protocol import GENESIS_HASH
from fiscal.protocol import chain_key as protocol_chain_key
from fiscal.money import fmt2
from fiscal.seal import chain_hash

from .errors import Invalid
from .issuer import iso
from .kpis import DayFigures
from .repository import LedgerEntry, Tx


_SAFE = 2**53 - 1
_text = encode_basestring  # a JSON string, as RFC 8785 (and json.dumps(ensure_ascii=False)) writes it


def entry_hash(prev_ledger_hash: str, outlet_id: str, seq: int, recorded_at: str, mode: str,
               authority_id: str, fiscal_number: int, invoice_hash: str) -> str:
    if (type(seq) is int and type(fiscal_number) is int and -_SAFE <= seq <= _SAFE
            and -_SAFE <= fiscal_number <= _SAFE and type(prev_ledger_hash) is str and type(outlet_id) is str
            and type(recorded_at) is str and type(mode) is str and type(authority_id) is str
            and type(invoice_hash) is str):
        # The canonical text written directly, members in RFC 8785 order: the same bytes as
        # below for strings and safe integers, without a dict and an encoder pass per entry
        # (reconciliation appends thousands of entries a second).
        text = (f'{{"authority_id":{_text(authority_id)},"fiscal_number":{int.__repr__(fiscal_number)},'
                f'"invoice_hash":{_text(invoice_hash)},"mode":{_text(mode)},"outlet_id":{_text(outlet_id)},'
                f'"prev_ledger_hash":{_text(prev_ledger_hash)},"recorded_at":{_text(recorded_at)},'
                f'"seq":{int.__repr__(seq)}}}')
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    return sha256_hex(canonical_bytes({
        "prev_ledger_hash": prev_ledger_hash, "outlet_id": outlet_id, "seq": seq,
        "recorded_at": recorded_at, "mode": mode, "authority_id": authority_id,
        "fiscal_number": fiscal_number, "invoice_hash": invoice_hash,
    }))


def number_key(outlet_id: str, invoice: dict) -> str:
    """What makes a fiscal number unique: the outlet's Stalela sequence, or the device's counter."""
    sec = invoice["security"]
    return number_key_of(outlet_id, invoice["mode"], sec["authority_id"], sec["fiscal_number"])


def number_key_of(outlet_id: str, mode: str, authority_id: str, fiscal_number: int) -> str:
    # A device's numbers are unique per outlet and MID: a MID some other tenant uses (rightly or
    # not) neither blocks this outlet's invoices nor tells it that the other's exist.
    if mode == "device":
        return f"device:{outlet_id}:{authority_id}:{fiscal_number}"
    return f"stalela:{outlet_id}:{fiscal_number}"


def legacy_device_number_key(mid: str, fiscal_number: int) -> str:
    """How a device number was keyed before version 2 (by MID alone): such entries still count,
    for their own outlet only."""
    return f"device:{mid}:{fiscal_number}"


def chain_key(outlet_id: str, invoice: dict) -> str:
    return chain_key_of(outlet_id, invoice["mode"], invoice["security"]["authority_id"])


def chain_key_of(outlet_id: str, mode: str, authority_id: str) -> str:
    """The ledger's chains: the Stalela signers' as everywhere (fiscal.protocol.chain_key); a
    device's chain is kept per outlet, so one MID bound by two tenants never shares a chain."""
    if mode == "device":
        return f"device:{outlet_id}:{authority_id}"
    return protocol_chain_key(mode, outlet_id=outlet_id)


def legacy_device_chain_key(mid: str) -> str:
    """A device chain's key before version 2 (see `legacy_device_number_key`)."""
    return f"device:{mid}"


# How the cloud holds an entry (the ledger's `state`): the seal checked by the cloud (cloud and
# delegated), the MCF's elements recorded as they are until the DGI confirms them, or a device the
# operator did not bind to the outlet (stored, flagged, out of the outlet's totals).
VERIFIED, DEVICE_ATTESTED, UNREGISTERED_DEVICE = "verified", "device-attested", "unregistered_device"


def entry_state(mode: str, state: str | None) -> str:
    """An entry's state; entries appended before version 2 have none (their device was bound)."""
    if state is not None:
        return state
    return DEVICE_ATTESTED if mode == "device" else VERIFIED


def code_row(outlet_id: str, invoice: dict) -> tuple:
    """The `invoice_codes` row of an appended invoice."""
    ref = invoice.get("reference")
    return (outlet_id, invoice["security"]["code"], invoice["type"], invoice["totals"]["total"],
            ref["code"] if isinstance(ref, dict) else None)


def sealed_entry(outlet_id: str, invoice: dict, now: datetime, tail: dict | None
                 ) -> tuple[LedgerEntry, tuple, list[tuple]]:
    """The ledger entry of an invoice the cloud sealed, after `tail` (the outlet's last entry,
    {seq, ledger_hash}, None for the first), with its `invoice_codes` row and `kpi_days` rows."""
    seq = tail["seq"] + 1 if tail else 1
    prev = tail["ledger_hash"] if tail else GENESIS_HASH
    sec = invoice["security"]
    recorded_at = iso(now)
    invoice_hash = invoice["chain"]["hash"]
    entry = LedgerEntry(
        outlet_id=outlet_id, seq=seq, recorded_at=recorded_at, mode=invoice["mode"],
        inv_type=invoice["type"], authority_id=sec["authority_id"], fiscal_number=sec["fiscal_number"],
        number_key=number_key(outlet_id, invoice), chain_key=chain_key(outlet_id, invoice),
        sealed_at=iso(datetime.fromisoformat(sec["timestamp"])), invoice_hash=invoice_hash,
        prev_ledger_hash=prev,
        ledger_hash=entry_hash(prev, outlet_id, seq, recorded_at, invoice["mode"], sec["authority_id"],
                               sec["fiscal_number"], invoice_hash),
        invoice=stored_text(invoice),
        state=VERIFIED,  # the cloud sealed it itself
    )
    figures = DayFigures(outlet_id, recorded_at)
    figures.add(entry.sealed_at, entry.inv_type, invoice["totals"]["total"])
    return entry, code_row(outlet_id, invoice), figures.rows()


def stored_text(invoice: dict) -> str:
    """How an invoice is stored: its JSON text (reconciliation stores well-formed invoices in their
    canonical form instead, `fastpath.forms`; both parse to the same invoice)."""
    return json.dumps(invoice, ensure_ascii=False, separators=(",", ":"))


def verify(tx: Tx, outlet_id: str) -> tuple[int, list[str], int]:
    """(entries checked, problems, entries archived before them) for an outlet's ledger; no
    problems = the chain holds."""
    problems: list[str] = []
    # Entries archived with their time partition (PostgreSQL, `stalela cloud ledger archive`)
    # leave their keys and hashes behind: the chain of the rest is verified from the last
    # archived one. Entries gone without an archive's record are reported missing.
    anchor = tx.archived_anchor(outlet_id)
    prev, before = (anchor["ledger_hash"], anchor["seq"]) if anchor else (GENESIS_HASH, 0)
    count = 0
    for row in tx.ledger_rows(outlet_id):
        count += 1
        seq = row["seq"]
        if seq != before + count:
            problems.append(f"seq {seq}: expected {before + count} (an entry is missing or inserted)")
        if row["prev_ledger_hash"] != prev:
            problems.append(f"seq {seq}: prev_ledger_hash does not match the previous entry")
        invoice = json.loads(row["invoice"])
        if chain_hash(invoice) != row["invoice_hash"] or invoice["chain"]["hash"] != row["invoice_hash"]:
            problems.append(f"seq {seq}: the stored invoice does not match its hash")
        expected = entry_hash(row["prev_ledger_hash"], outlet_id, seq, row["recorded_at"], row["mode"],
                              row["authority_id"], row["fiscal_number"], row["invoice_hash"])
        if row["ledger_hash"] != expected:
            problems.append(f"seq {seq}: ledger_hash does not match the entry")
        prev = row["ledger_hash"]
    return count, problems, before


def page(tx: Tx, outlet_id: str, after: int, limit: int) -> dict:
    rows = tx.ledger_page(outlet_id, after, limit)
    entries = [{
        "seq": r["seq"], "recorded_at": r["recorded_at"], "mode": r["mode"], "type": r["inv_type"],
        "authority_id": r["authority_id"], "fiscal_number": r["fiscal_number"],
        "chain_key": r["chain_key"], "invoice_hash": r["invoice_hash"],
        "prev_ledger_hash": r["prev_ledger_hash"], "ledger_hash": r["ledger_hash"],
        "state": entry_state(r["mode"], r["state"]),
        "invoice": json.loads(r["invoice"]),
    } for r in rows]
    return {"outlet_id": outlet_id, "entries": entries,
            "next_after": entries[-1]["seq"] if len(entries) == limit else None}


# The widest period asked for: beyond it, the day after `to` or the conversion to UTC would
# overflow datetime (0001-01-01, 9999-12-31).
_EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(9999, 1, 1, tzinfo=timezone.utc)
_OUTSIDE = "a period lies between 1900-01-01 and 9999-01-01 (UTC)"


def period_bounds(start: str | None, end: str | None, time_zone: str) -> tuple[datetime, datetime]:
    """`from`/`to` as dates (whole days in the outlet's zone, `to` inclusive) or ISO datetimes."""
    zone = ZoneInfo(time_zone)

    def parse(text: str, is_end: bool) -> datetime:
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                moment = datetime.combine(day + timedelta(days=1) if is_end else day, time(), zone)
            else:
                moment = datetime.fromisoformat(text)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=zone)
        except ValueError:
            raise Invalid("bad_period", f"{text!r} is neither a date (YYYY-MM-DD) nor an ISO "
                          "datetime") from None
        except OverflowError:  # the day after 9999-12-31
            raise Invalid("bad_period", _OUTSIDE) from None
        return moment

    lo = parse(start, False) if start else datetime(1970, 1, 1, tzinfo=timezone.utc)
    hi = parse(end, True) if end else _LATEST
    if lo < _EARLIEST or hi > _LATEST:
        raise Invalid("bad_period", _OUTSIDE)
    if hi <= lo:
        raise Invalid("bad_period", "`to` must be after `from`")
    return lo, hi


def _add(bucket: dict, totals: dict) -> None:
    bucket["count"] += 1
    for key in ("total", "vat", "specific_tax"):
        bucket[key] += Decimal(totals[key])
    for group, g in totals["by_group"].items():
        acc = bucket["by_group"].setdefault(group, {"total": Decimal(0), "ht": Decimal(0), "vat": Decimal(0)})
        for key in ("total", "ht", "vat"):
            acc[key] += Decimal(g[key])
    for p in totals["payments"]:
        bucket["payments"][p["method"]] = bucket["payments"].get(p["method"], Decimal(0)) + Decimal(p["amount"])


def _new_bucket() -> dict:
    return {"count": 0, "total": Decimal(0), "vat": Decimal(0), "specific_tax": Decimal(0),
            "by_group": {}, "payments": {}}


def _render(bucket: dict) -> dict:
    return {
        "count": bucket["count"],
        "total": fmt2(bucket["total"]), "vat": fmt2(bucket["vat"]),
        "specific_tax": fmt2(bucket["specific_tax"]),
        "by_group": {g: {k: fmt2(v) for k, v in acc.items()} for g, acc in sorted(bucket["by_group"].items())},
        "payments": {m: fmt2(v) for m, v in sorted(bucket["payments"].items())},
    }


def summary(tx: Tx, outlet: dict, start: str | None, end: str | None) -> dict:
    """Count and totals of an outlet's ledger for a period, per invoice type and per tax group.

    Entries of an unregistered device are left out (counted under `excluded`).

    Amounts are summed as sealed (credit notes carry positive amounts; they are reported under
    their own type so the caller decides how to net them, as the agent's reports do).
    """
    lo, hi = period_bounds(start, end, outlet["time_zone"])
    by_type: dict[str, dict] = {}
    by_mode: dict[str, int] = {}
    count = 0
    for row in tx.ledger_in_period(outlet["id"], iso(lo), iso(hi)):
        invoice = json.loads(row["invoice"])
        count += 1
        by_mode[row["mode"]] = by_mode.get(row["mode"], 0) + 1
        _add(by_type.setdefault(row["inv_type"], _new_bucket()), invoice["totals"])
    return {
        "outlet_id": outlet["id"], "from": lo.isoformat(), "to": hi.isoformat(),
        "count": count, "by_mode": by_mode,
        "by_type": {t: _render(b) for t, b in sorted(by_type.items())},
        # Stored but not counted above: invoices of a device not bound to the outlet.
        "excluded": tx.excluded_in_period(outlet["id"], iso(lo), iso(hi)),
    }
