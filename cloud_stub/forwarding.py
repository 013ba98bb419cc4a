"""DGI forwarding's state in the cloud database: one transaction per function.

The asynchronous loop (forwarder.py) calls these through `CloudService.call`; the CLI and the
HTTP API read and release through them too. Every write that belongs to an outlet's work is
fenced by that outlet's lease (`lease_owner`), so two instances never both drive one outlet.

On PostgreSQL (READ COMMITTED) a write first locks the outlet's queue row (`dgi_lock_queue`),
so a lease it checks stays its own until the commit, and `claim`'s conditional UPDATE, waiting
for a row another instance is changing, re-reads the lease that instance committed: an outlet
is leased to one instance at a time. Leases are taken in outlet order (no two claims deadlock).
These writes touch no counter, chain or ledger row: they do not take the outlet's sealing lock.
"""
from __future__ import annotations

import orjson
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import NotFound
from .repository import Store

FINAL = ("normalized", "device_reported")


def ts(moment: datetime) -> str:
    """UTC, fixed width: these strings are compared as text in SQL.

    The forwarder stamps every recording (several per invoice, thousands a second): the text up
    to the second is kept for the last second seen, and only the milliseconds are formatted
    anew (strftime each time was ≈ 3 µs of the event loop's time per stamp)."""
    global _ts_last
    second = moment.replace(microsecond=0)
    last = _ts_last  # one tuple, read once: another thread may replace it meanwhile, never mix it
    if second != last[0]:
        utc = second.astimezone(timezone.utc)
        if utc.microsecond:  # an offset with microseconds (never met): no shortcut
            return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        last = _ts_last = (second, utc.strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{last[1]}{moment.microsecond // 1000:03d}Z"


# The last second `ts` formatted, and its text.
_ts_last: tuple[Any, str] = (None, "")


@dataclass
class Work:
    """One ledger entry the forwarder must take to the DGI (or mark device-reported)."""

    outlet_id: str
    seq: int
    ledger_id: int
    mode: str
    invoice: dict
    submission: dict | None
    failures: int
    # Set by the recording that settles the entry: the queue's next entry after it, and whether
    # an operator released an entry meanwhile. The forwarder goes on with the entries it read
    # ahead only if the first of them is that next entry and nothing was released; otherwise
    # it reads the queue again (forwarder.py).
    next_seq: int | None = None
    released_waiting: bool = False

    @property
    def invoice_id(self) -> str:
        return str(self.invoice.get("id", f"seq-{self.seq}"))

    @property
    def rn(self) -> str:
        return self.invoice_id


def add_queues(store: Store, now: datetime) -> None:
    with store.write() as tx:
        tx.dgi_add_queues(ts(now))


def claim(store: Store, owner: str, outlet_ids: list[str], now: datetime, lease: timedelta, limit: int) -> list[str]:
    if not outlet_ids or limit <= 0:
        return []
    with store.write() as tx:
        candidates = tx.dgi_claimable(outlet_ids, ts(now), limit)
        taken = {o for o in sorted(candidates) if tx.dgi_take_lease(o, owner, ts(now), ts(now + lease))}
        return [o for o in candidates if o in taken]  # the longest waiting first


def renew(store: Store, outlet_id: str, owner: str, now: datetime, lease: timedelta) -> bool:
    with store.write() as tx:
        return tx.dgi_renew_lease(outlet_id, owner, ts(now + lease))


def drop(store: Store, outlet_id: str, owner: str, now: datetime) -> None:
    with store.write() as tx:
        tx.dgi_drop_lease(outlet_id, owner, ts(now))


def next_work(store: Store, outlet_id: str) -> Work | None:
    """A released entry first (the operator asked for it), else the queue's next entry."""
    ahead = next_works(store, outlet_id, 1)
    return ahead[0] if ahead else None


def next_works(store: Store, outlet_id: str, limit: int) -> list[Work]:
    """A released entry alone (the operator asked for it), else up to `limit` entries from the
    queue's next one, in ledger order, each with its submission: one read for several entries."""
    with store.read() as tx:
        queue = tx.dgi_queue(outlet_id)
        if queue is None:
            return []
        released = tx.dgi_released(outlet_id)
        if released:
            entry = tx.ledger_entry(outlet_id, released["seq"])
            return [] if entry is None else [_work(outlet_id, entry, released, queue)]
        entries = tx.ledger_entries_from(outlet_id, queue["next_seq"], max(1, limit))
        if not entries:
            return []
        subs = {r["seq"]: r for r in tx.dgi_submissions_between(outlet_id, entries[0]["seq"], entries[-1]["seq"])}
        return [_work(outlet_id, e, subs.get(e["seq"]), queue) for e in entries]


def _work(outlet_id: str, entry: dict, submission: dict | None, queue: dict) -> Work:
    return Work(outlet_id, entry["seq"], entry["id"], entry["mode"], orjson.loads(entry["invoice"]), submission,
                queue["failures"])


def _done(tx, work: Work, owner: str, now: str) -> bool:
    """Past this entry: advance the queue if it was the queue's next one. False if the lease is lost."""
    queue = tx.dgi_advance(work.outlet_id, owner, work.seq, now)
    if queue is None:
        return False
    work.next_seq, work.released_waiting = queue["next_seq"], bool(queue["released"])
    return queue["lease_owner"] == owner


def pass_settled(store: Store, work: Work, owner: str, now: datetime) -> bool:
    """An entry already settled whose queue did not advance (its instance lost the lease right
    then): only advance. Sending it again could normalize it twice."""
    with store.write() as tx:
        return pass_settled_in(tx, work, owner, now)


def pass_settled_in(tx, work: Work, owner: str, now: datetime) -> bool:
    tx.dgi_lock_queue(work.outlet_id)
    return _done(tx, work, owner, ts(now))


def clear_back_off(store: Store, outlet_ids: list[str], now: datetime) -> None:
    """A new token for these outlets: try them now, not after the back-off the old one earned."""
    with store.write() as tx:
        for outlet_id in sorted(outlet_ids):
            tx.dgi_clear_failures(outlet_id, ts(now))


def record_device(store: Store, work: Work, owner: str, now: datetime) -> bool:
    """The MCF reports its own invoices to the DGI: nothing to send, only to note."""
    with store.write() as tx:
        return record_device_in(tx, work, owner, now)


def record_device_in(tx, work: Work, owner: str, now: datetime) -> bool:
    at = ts(now)
    tx.dgi_lock_queue(work.outlet_id)
    tx.dgi_put_submission(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                          invoice_id=work.invoice_id, rn=work.rn, state="device_reported", now=at)
    _add_once(tx, work, "device_reported", at)
    return _done(tx, work, owner, at)


def _add_once(tx, work: Work, kind: str, at: str, **fields: Any) -> None:
    # Nothing added if recorded already (an instance that lost its lease got the same answer).
    tx.dgi_add_event(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                     invoice_id=work.invoice_id, kind=kind, now=at, once=True, **fields)


def record_submitted(store: Store, work: Work, owner: str, uid: str, total: str, vtotal: str,
                     now: datetime) -> bool:
    """Phase 1 answered: keep `uid` before confirming. False (nothing kept) if the lease is lost."""
    with store.write() as tx:
        return record_submitted_in(tx, work, owner, uid, total, vtotal, now)


def record_submitted_in(tx, work: Work, owner: str, uid: str, total: str, vtotal: str, now: datetime) -> bool:
    queue = tx.dgi_lock_queue(work.outlet_id)
    if queue is None or queue["lease_owner"] != owner:
        return False
    tx.dgi_put_submission(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                          invoice_id=work.invoice_id, rn=work.rn, state="submitted", uid=uid,
                          total=total, vtotal=vtotal, now=ts(now))
    return True


def record_ahead_in(tx, work: Work, owner: str, uid: str, total: str, vtotal: str, now: datetime) -> bool:
    """Phase 1 of an entry read ahead (the forwarder's look-ahead) answered while the entry
    before it is being confirmed: keep `uid` as `submitted`, as `record_submitted` does, but
    only for an entry the queue has not passed and that has no submission of its own yet (or
    one left `submitting`): a look-ahead never overwrites what another pass recorded. False:
    nothing kept (the forwarder then cancels the request)."""
    queue = tx.dgi_lock_queue(work.outlet_id)
    if queue is None or queue["lease_owner"] != owner or queue["next_seq"] > work.seq:
        return False
    sub = tx.dgi_submission(work.outlet_id, work.seq)
    if sub is not None and (sub["state"] != "submitting" or sub["uid"]):
        return False
    tx.dgi_put_submission(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                          invoice_id=work.invoice_id, rn=work.rn, state="submitted", uid=uid,
                          total=total, vtotal=vtotal, now=ts(now))
    return True


def forget_ahead(store: Store, work: Work, owner: str, uid: str, now: datetime) -> bool:
    """The forwarder stops with a look-ahead's `uid` kept and its confirm never sent: back to
    `submitting`, so the request becomes a stray (cancelled at the next take-up) instead of a
    `submitted` entry that may expire before it is resolved (without the DGI's lookup an
    expired request cannot be told from a normalized one). Fenced by the lease, and only while
    the entry still holds that very `uid` in `submitted`: an instance that took the outlet over
    may have confirmed it since. True if forgotten."""
    with store.write() as tx:
        queue = tx.dgi_lock_queue(work.outlet_id)
        if queue is None or queue["lease_owner"] != owner:
            return False
        sub = tx.dgi_submission(work.outlet_id, work.seq)
        if sub is None or sub["state"] != "submitted" or sub["uid"] != uid:
            return False
        forget_uid_in(tx, work, now)
        return True


def forget_uid(store: Store, work: Work, now: datetime) -> None:
    """The DGI no longer has the request (expired, cancelled): submit the invoice anew."""
    with store.write() as tx:
        forget_uid_in(tx, work, now)


def forget_uid_in(tx, work: Work, now: datetime) -> None:
    tx.dgi_lock_queue(work.outlet_id)
    tx.dgi_put_submission(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                          invoice_id=work.invoice_id, rn=work.rn, state="submitting", now=ts(now))


def record_normalized(store: Store, work: Work, owner: str, uid: str, elements: dict, now: datetime) -> bool:
    with store.write() as tx:
        return record_normalized_in(tx, work, owner, uid, elements, now)


def record_normalized_in(tx, work: Work, owner: str, uid: str, elements: dict, now: datetime) -> bool:
    at = ts(now)
    tx.dgi_lock_queue(work.outlet_id)
    sub = work.submission or {}
    tx.dgi_put_submission(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                          invoice_id=work.invoice_id, rn=work.rn, state="normalized", uid=uid,
                          total=sub.get("total"), vtotal=sub.get("vtotal"), now=at)
    _add_once(tx, work, "normalized", at, uid=uid, code=_text(elements.get("codeDEFDGI")),
              counters=_text(elements.get("counters")), nim=_text(elements.get("nim")),
              date_time=_text(elements.get("dateTime")), qr_code=_text(elements.get("qrCode")))
    return _done(tx, work, owner, at)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def record_quarantine(store: Store, work: Work, owner: str, code: str, desc: str, now: datetime,
                      uid: str | None = None) -> bool:
    with store.write() as tx:
        return record_quarantine_in(tx, work, owner, code, desc, now, uid)


def record_quarantine_in(tx, work: Work, owner: str, code: str, desc: str, now: datetime,
                         uid: str | None = None) -> bool:
    at = ts(now)
    tx.dgi_lock_queue(work.outlet_id)
    tx.dgi_put_submission(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                          invoice_id=work.invoice_id, rn=work.rn, state="quarantined", uid=uid,
                          error_code=code, error_desc=desc, now=at)
    tx.dgi_add_event(outlet_id=work.outlet_id, seq=work.seq, ledger_id=work.ledger_id,
                     invoice_id=work.invoice_id, kind="quarantined", uid=uid, error_code=code,
                     error_desc=desc, now=at)
    return _done(tx, work, owner, at)


def record_together(store: Store, recordings: list[tuple[Any, tuple]]) -> list[tuple[bool, Any]]:
    """Group commit: the recordings of many outlets (`(fn_in, args)`, each `fn_in(tx, *args)`)
    in one transaction, one commit (one fsync on SQLite) for all of them. Each keeps its own
    fence (it locks its outlet's queue row and checks the lease); taken in outlet order, so two
    instances' groups lock queue rows in the same order (no deadlock on PostgreSQL). If one of
    them fails, the group is rolled back and each is run again alone, so one failure does not
    fail the others. Returns `(ok, result or exception)` per recording, in the given order."""
    order = sorted(range(len(recordings)), key=lambda i: recordings[i][1][0].outlet_id)
    results: list[tuple[bool, Any]] = [(False, None)] * len(recordings)
    try:
        with store.write() as tx:
            for i in order:
                fn, args = recordings[i]
                results[i] = (True, fn(tx, *args))
        return results
    except Exception:
        if len(recordings) == 1:
            raise
    for i in order:
        fn, args = recordings[i]
        try:
            with store.write() as tx:
                results[i] = (True, fn(tx, *args))
        except Exception as exc:
            results[i] = (False, exc)
    return results


def back_off(store: Store, outlet_id: str, owner: str, delay: float, error: str, now: datetime) -> None:
    with store.write() as tx:
        tx.dgi_back_off(outlet_id, owner, ts(now + timedelta(seconds=delay)), error[:500], ts(now))


def known_uids(store: Store, outlet_id: str) -> set[str]:
    with store.read() as tx:
        return tx.dgi_submitted_uids(outlet_id)


# -- reading and releasing (operators, agents) ---------------------------------------------


def _submission_view(row: dict) -> dict:
    return {"seq": row["seq"], "invoice_id": row["invoice_id"], "rn": row["rn"], "state": row["state"],
            "uid": row["uid"], "attempts": row["attempts"], "error_code": row["error_code"],
            "error_desc": row["error_desc"], "updated_at": row["updated_at"]}


def outlet_status(store: Store, outlet_id: str, limit: int = 100) -> dict:
    with store.read() as tx:
        if tx.outlet(outlet_id) is None:
            raise NotFound("outlet_not_found", f"no outlet {outlet_id}")
        queue = tx.dgi_queue(outlet_id)
        counts = tx.dgi_state_counts(outlet_id)
        entries = tx.ledger_count(outlet_id)
        quarantined = tx.dgi_quarantined(outlet_id, limit)
    next_seq = queue["next_seq"] if queue else 1
    return {
        "outlet_id": outlet_id,
        "ledger_entries": entries,
        "next_seq": next_seq,
        "waiting": max(0, entries - next_seq + 1),
        "counts": counts,
        "failures": queue["failures"] if queue else 0,
        "last_error": queue["last_error"] if queue else None,
        "not_before": queue["not_before"] if queue else None,
        "leased_by": queue["lease_owner"] if queue else None,
        "quarantined": [_submission_view(r) for r in quarantined],
    }


def all_status(store: Store) -> list[dict]:
    with store.read() as tx:
        ids = tx.outlet_ids()
    return [outlet_status(store, o, limit=1000) for o in ids]


def release(store: Store, outlet_id: str, seq: int | None, actor: str, now: datetime) -> list[int]:
    """Send quarantined entries again: one (`seq`) or all of the outlet's. Returns the seqs released."""
    at = ts(now)
    with store.write() as tx:
        if tx.outlet(outlet_id) is None:
            raise NotFound("outlet_not_found", f"no outlet {outlet_id}")
        tx.dgi_lock_queue(outlet_id)  # not while the outlet's forwarder records an answer
        rows = tx.dgi_quarantined(outlet_id, 100_000)
        if seq is not None:
            rows = [r for r in rows if r["seq"] == seq]
            if not rows:
                raise NotFound("not_quarantined", f"entry {seq} of outlet {outlet_id} is not quarantined")
        released = []
        for r in rows:
            if tx.dgi_release(outlet_id, r["seq"], at):  # one `released` event per release, whoever asks
                tx.dgi_add_event(outlet_id=outlet_id, seq=r["seq"], ledger_id=r["ledger_id"],
                                 invoice_id=r["invoice_id"], kind="released", uid=r["uid"], actor=actor, now=at)
                released.append(r["seq"])
        tx.dgi_clear_failures(outlet_id, at)
        return released


def invoice_dgi(store: Store, outlet_id: str, invoice_id: str) -> dict:
    """What the DGI knows of one invoice: `{state, ...}` (the elements once normalized)."""
    with store.read() as tx:
        sub = tx.dgi_submission_by_invoice(outlet_id, invoice_id)
        if sub is None:
            seq = tx.ledger_seq_of_invoice(outlet_id, invoice_id)
            if seq is None:
                raise NotFound("invoice_not_found", f"no invoice {invoice_id} in outlet {outlet_id}'s ledger")
            return {"invoice_id": invoice_id, "seq": seq, "state": "queued"}
        answer = tx.dgi_answer(outlet_id, sub["seq"]) if sub["state"] == "normalized" else None
    out: dict[str, Any] = {"invoice_id": invoice_id, "seq": sub["seq"], "state": sub["state"]}
    if sub["state"] == "submitting":
        out["state"] = "queued"
    if sub["state"] == "quarantined":
        out.update(error_code=sub["error_code"], error_desc=sub["error_desc"])
    if answer is not None:
        out.update(uid=answer["uid"], code=answer["code"], counters=answer["counters"], nim=answer["nim"],
                   date_time=answer["date_time"], qr_code=answer["qr_code"], recorded_at=answer["recorded_at"])
    return out
