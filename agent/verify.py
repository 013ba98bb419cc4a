"""Offline verification of an agent's journal: chains, signatures, numbering, credentials.

Used by `stalela verify`. It reads the database read-only and reports the FIRST fault precisely
(which invoice, which number, what is wrong); it changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import orjson

from fiscal.canonical import Fragments, loads_plain
from fiscal.protocol import GENESIS_HASH, STALELA_QR_TAG
from fiscal.credential import BlockClosure, DelegatedCredential
from fiscal.seal import chain_hash, verify_stalela_seal
from fiscal.signing import auth_code, b32, load_verifying_key, unb64url
from .store import verify as store
from .store.bodies import unpack, unpack_utf8
from .store.db import connect
from .store.invoices import sealed_count
from .store.reports import z_reports


@dataclass
class Fault:
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class Report:
    checked: int = 0
    chains: dict[str, int] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults


def _describe(row: sqlite3.Row) -> str:
    return f"invoice {row['id']} (fiscal number {row['fiscal_number']}, authority {row['authority_id']})"


def verify_journal(db_path: Path, issuer_public_key: str, *, stop_at_first: bool = True,
                   progress: Callable[[int], None] | None = None) -> Report:
    report = Report()
    conn = connect(db_path, readonly=True)
    try:
        _verify(conn, issuer_public_key, report, stop_at_first, progress)
        if report.ok or not stop_at_first:
            _verify_z_reports(conn, report)
    finally:
        conn.close()
    return report


def _verify_z_reports(conn, report: Report) -> None:
    rows = z_reports(conn)
    keys = {DelegatedCredential.model_validate_json(r["body"]).agent_public_key
            for r in store.credential_bodies(conn)}
    report.faults.extend(verify_z_chain(rows, keys or None))


def verify_z_chain(rows, agent_keys: set[str] | None = None, *, prev_hash: str = GENESIS_HASH,
                   prev_number: int = 0, prev_to_seq: int | None = None) -> list[Fault]:
    """Faults of a chain of Z reports, in number order: each body's hash and Ed25519 signature, the
    link to the previous Z, numbering 1, 2, 3... without gaps, contiguous invoice ranges, and a
    signer key among `agent_keys` (the keys the cloud certified; None = not checked). `rows` are
    `reports` rows or plain bodies (dicts); a row's columns must agree with its body."""
    from .reports.core import verify_report

    faults: list[Fault] = []
    for row in rows:
        if isinstance(row, dict):
            body, cols = row, None
        else:
            cols = row
            try:
                body = json.loads(row["body"])
            except ValueError:
                faults.append(Fault(f"Z report {row['number']} ({row['id']})", "stored report is unreadable"))
                return faults
        where = f"Z report {body.get('number')} ({body.get('id')})"
        problems = verify_report(body)
        if cols is not None:
            for col, val in (("id", body.get("id")), ("number", body.get("number")), ("hash", body.get("hash")),
                             ("from_seq", body.get("from_seq")), ("to_seq", body.get("to_seq"))):
                if cols[col] != val:
                    problems.append(f"column {col} ({cols[col]!r}) differs from the sealed report ({val!r})")
        if agent_keys is not None and body.get("signer_public_key") not in agent_keys:
            problems.append("signed by a key that no credential of this outlet certifies")
        if body.get("chain", {}).get("prev_hash") != prev_hash:
            problems.append("chain broken: prev_hash does not match the previous Z report")
        if body.get("number") != prev_number + 1:
            problems.append(f"numbering: expected Z {prev_number + 1}, found {body.get('number')}")
        if prev_to_seq is not None and body.get("from_seq") != prev_to_seq + 1:
            problems.append(f"invoice range starts at seq {body.get('from_seq')}, expected {prev_to_seq + 1}")
        if problems:
            faults.append(Fault(where, "; ".join(problems)))
        prev_hash, prev_number, prev_to_seq = body.get("hash"), body.get("number") or prev_number + 1, body.get("to_seq")
    return faults


def _verify(conn, issuer_key: str, report: Report, stop: bool, progress) -> None:
    def fault(where: str, problem: str) -> bool:
        report.faults.append(Fault(where, problem))
        return stop

    creds: dict[str, tuple[DelegatedCredential, sqlite3.Row]] = {}
    for row in store.credentials(conn):
        try:
            cred = DelegatedCredential.model_validate_json(row["body"])
        except ValueError as exc:
            if fault(f"credential {row['id']}", f"stored credential is unreadable ({exc})"):
                return
            continue
        if not cred.verify(issuer_key):
            if fault(f"credential {row['id']}", "not signed by the cloud's issuer key"):
                return
        if cred.id != row["id"] or cred.block_start != row["block_start"] or cred.block_end != row["block_end"]:
            if fault(f"credential {row['id']}", "table columns disagree with the signed credential"):
                return
        if row["closure"]:
            closure = BlockClosure.model_validate_json(row["closure"])
            if not closure.verify(cred.agent_public_key) or closure.credential_id != cred.id:
                if fault(f"credential {row['id']}", "block closure statement is not validly signed"):
                    return
        creds[cred.id] = (cred, row)

    # Per invoice, what can be checked on its own (content, seal, block, window) runs first, in
    # several processes for a large journal; the walk then checks what links invoices (chain,
    # numbering, credential hand-overs) from the columns, which that first pass proved agree with
    # each sealed body. While the workers check, this process walks already, as if every invoice
    # were sound on its own (the usual case): that walk stands when the first pass finds nothing,
    # and is made again knowing what it found otherwise. Same faults, in the same order.
    ahead = Report()
    content = _content_problems(conn, issuer_key, progress, meanwhile=lambda: _walk(conn, creds, {}, ahead, stop))
    if content:
        _walk(conn, creds, content, report, stop)
    else:
        report.checked += ahead.checked
        report.chains.update(ahead.chains)
        report.faults.extend(ahead.faults)


def _walk(conn, creds: dict[str, tuple[DelegatedCredential, sqlite3.Row]], content: dict[int, tuple],
          report: Report, stop: bool) -> None:
    """Every chain in sealing order, then the credential counters (see _verify)."""
    def fault(where: str, problem: str) -> bool:
        report.faults.append(Fault(where, problem))
        return stop

    chain_keys = store.sealed_chain_keys(conn)
    last_by_cred: dict[str, int] = {}
    anchors = {r["chain_key"]: r for r in store.chain_anchors(conn)}
    for a in anchors.values():
        last_by_cred.update(json.loads(a["credentials"]))
    for key in chain_keys:
        # Discarded (acknowledged, past retention) invoices leave an anchor: the chain starts there.
        anchor = anchors.get(key)
        prev_hash = anchor["last_hash"] if anchor else GENESIS_HASH
        prev_number: int | None = anchor["last_number"] if anchor else None
        prev_cred: str | None = anchor["last_credential"] if anchor else None
        count = 0
        for row in store.chain_links(conn, key):
            count += 1
            report.checked += 1
            where = _describe(row)
            found = content.get(row["seq"])
            if found is not None and found[0] == _UNREADABLE:
                if fault(where, found[1]):
                    return
                continue
            before_link, of_seal, unknown_cred = found if found is not None else ((), (), False)
            for problem in before_link:
                if fault(where, problem):
                    return
            if row["prev_hash"] != prev_hash:
                if fault(where, "chain broken: prev_hash does not match the previous invoice "
                                "(an invoice was removed, inserted or reordered)"):
                    return
            prev_hash = row["hash"]
            number = row["fiscal_number"]
            mode = row["mode"]
            for problem in of_seal:
                if fault(where, problem):
                    return
            if mode == "delegated":
                if unknown_cred:
                    continue
                cred, _ = creds[row["authority_id"]]
                if prev_cred == cred.id:
                    expected = prev_number + 1
                else:
                    if prev_cred is not None and prev_cred in creds:
                        _check_closed_tail(creds[prev_cred], prev_number, fault)
                    expected = cred.block_start
                if number != expected:
                    kind = "repeated" if prev_number is not None and number <= prev_number else "skipped"
                    if fault(where, f"numbering {kind}: expected {expected}, found {number}"):
                        return
                prev_cred = cred.id
                last_by_cred[cred.id] = number
            elif mode == "cloud":
                if prev_number is not None and number <= prev_number:
                    if fault(where, f"cloud numbering not increasing: {number} after {prev_number}"):
                        return
            elif mode == "device":
                if prev_number is not None and number != prev_number + 1:
                    kind = "repeated" if number <= prev_number else "skipped"
                    if fault(where, f"device counter {kind}: expected {prev_number + 1}, found {number}"):
                        return
            prev_number = number
        report.chains[key] = count
        tip = store.chain_tip_hash(conn, key)
        if tip is not None and tip != prev_hash:
            if fault(f"chain {key}", "the last invoice is not the recorded chain tip "
                                     "(invoices at the end of the chain are missing)"):
                return
    # Every credential's counter must agree with the last invoice sealed under it.
    for cid, (cred, row) in creds.items():
        used_to = last_by_cred.get(cid, cred.block_start - 1)
        if row["next_number"] - 1 != used_to:
            if fault(f"credential {cid}", f"allocated up to {row['next_number'] - 1} but the journal "
                                          f"holds invoices only up to {used_to} (invoices missing)"):
                return
        if row["closure"]:
            closure = BlockClosure.model_validate_json(row["closure"])
            if closure.last_used != used_to:
                if fault(f"credential {cid}", f"closed at {closure.last_used} but the journal ends at {used_to}"):
                    return


# ------------------------------------------------------------ per-invoice checks (parallel)
_UNREADABLE = "unreadable"
_CHUNK = 5_000  # invoices per task of the parallel pass
PARALLEL_FROM = 4_000  # journals smaller than this are checked in one process (a pool costs ~0.1 s)


def _content_problems(conn, issuer_key: str, progress, meanwhile: Callable[[], None] = lambda: None
                      ) -> dict[int, tuple]:
    """{seq: problems} for every sealed invoice whose own content has a problem (see _problems_of).
    `meanwhile()` runs once in this process, while the workers check (when there are any)."""
    lo, hi, total = store.sealed_span(conn)
    if not total:
        meanwhile()
        return {}
    workers = min(os.cpu_count() or 1, 8)
    db_path = store.database_file(conn)
    if workers < 2 or total < PARALLEL_FROM:
        found = _check_range(db_path, issuer_key, lo, hi + 1, progress)[1]
        meanwhile()
        return found
    found: dict[int, tuple] = {}
    # fork: the CLI is single-threaded here, and forked workers start at once.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        tasks = [pool.submit(_check_range, db_path, issuer_key, start, min(start + _CHUNK, hi + 1))
                 for start in range(lo, hi + 1, _CHUNK)]
        meanwhile()
        for task in as_completed(tasks):
            n, part = task.result()
            found.update(part)
            if progress:
                progress(n)
    return found


def _check_range(db_path: str, issuer_key: str, lo: int, hi: int, progress=None) -> tuple[int, dict[int, tuple]]:
    conn = connect(Path(db_path), readonly=True)
    try:
        creds: dict[str, DelegatedCredential] = {}
        for row in store.credential_bodies(conn):
            try:
                cred = DelegatedCredential.model_validate_json(row["body"])
            except ValueError:
                continue  # reported by the walk over credentials
            creds[cred.id] = cred
        keys: dict[str, object] = {}  # loaded public keys, by credential id ("" = the issuer's)
        found: dict[int, tuple] = {}
        n = 0
        # Only the columns the checks read (the rows are most of the pass).
        for row in store.sealed_rows(conn, lo, hi):
            n += 1
            if progress and n % 1000 == 0:
                progress(1000)
            problems = _problems_of(row, creds, keys, issuer_key)
            if problems is not None:
                found[row["seq"]] = problems
        if progress and n % 1000:
            progress(n % 1000)
        return n, found
    finally:
        conn.close()


def _problems_of(row, creds: dict[str, DelegatedCredential], keys: dict, issuer_key: str) -> tuple | None:
    """What is wrong with one stored invoice on its own, or None.

    A body stored in canonical form is checked by hashing what is stored (`_sound_as_stored`);
    anything that check does not confirm, and every other body, goes through the full check
    below, which names the problem.
    """
    try:
        if _sound_as_stored(row, creds, keys):
            return None
    except (ValueError, KeyError, TypeError, AttributeError):  # orjson.JSONDecodeError is a ValueError
        pass  # malformed in some way: the full check below says how
    return _problems_in_full(row, creds, keys, issuer_key)


# A canonical stored text (RFC 8785: keys sorted, the writer's form since the store keeps the
# canonical bytes) starts with the chain object, its `hash` member first: the chain view is the
# text without that member, cut at fixed offsets.
_CANONICAL_HEAD = b'{"chain":{"hash":"'
_HASH_START, _HASH_END = len(_CANONICAL_HEAD), len(_CANONICAL_HEAD) + 64
_SIGNED_OUT = ("code", "qr_payload", "signature")
_encode_sorted = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                  check_circular=False).encode
# Where _check_range's columns are in each row (the stored-form check reads them by position).
(_SEQ, _ID, _REQUEST_ID, _NUMBER, _AUTHORITY, _CODE, _HASH, _PREV_HASH, _TYPE, _MODE, _BODY) = (
    store.CHECK_COLUMNS.index(c) for c in ("seq", "id", "request_id", "fiscal_number", "authority_id", "code",
                                           "hash", "prev_hash", "type", "mode", "body"))


def _sound_as_stored(row, creds: dict[str, DelegatedCredential], keys: dict) -> bool:
    """True when a delegated invoice stored as its canonical text is sound on its own: the chain
    hash and the signed digest are computed over the stored bytes themselves (nothing is
    re-encoded but the small security object), and every check of the full pass holds.

    Why this is as strict as the full check: the signature covers SHA-256 of the unsigned view
    derived here from the stored text; if it verifies, that derived text is byte for byte the one
    the signer canonicalized (a SHA-256 collision aside), so the stored text is the signed
    invoice plus its code, QR payload and signature (checked here against the signature) and its
    chain hash (checked against the hash of the rest). False means "not confirmed", never
    "faulty": the caller then runs the full check, which decides and words the problem.
    """
    stored = row[_BODY]
    if type(stored) is not bytes:
        return False  # plain text: a journal written before compression (and canonical storage)
    raw = unpack_utf8(stored)
    if not raw.startswith(_CANONICAL_HEAD) or raw[_HASH_END:_HASH_END + 2] != b'",':
        return False  # a journal written before canonical storage, or another mode's form
    # orjson: 2.5 × faster than json here. Whatever it refuses (NaN, huge integers...) takes the
    # full check; it need not agree with json on anything else, the bytes are what is hashed.
    body = orjson.loads(raw)
    sec, chain = body["security"], body["chain"]
    if body["mode"] != "delegated":
        return False
    cred = creds.get(sec["authority_id"])
    if cred is None:
        return False
    # The chain view: the text without `"hash":"…",`.
    chain_bytes = raw[:_HASH_START - 8] + raw[_HASH_END + 2:]
    hash_hex = chain["hash"]
    if hash_hex.encode("ascii") != raw[_HASH_START:_HASH_END] or hashlib.sha256(chain_bytes).hexdigest() != hash_hex:
        return False
    # The unsigned view: the chain view with the security object's code, QR payload and
    # signature taken out; the object is found by its own canonical text, once and only once.
    stored_sec = b'"security":' + _encode_sorted(sec).encode("utf-8")
    if chain_bytes.count(stored_sec) != 1:
        return False
    unsigned = chain_bytes.replace(stored_sec, b'"security":' + _encode_sorted(
        {k: v for k, v in sec.items() if k not in _SIGNED_OUT}).encode("utf-8"))
    number = sec["fiscal_number"]
    moment = datetime.fromisoformat(sec["timestamp"])
    totals = body["totals"]
    message = ";".join([STALELA_QR_TAG, sec["authority_id"], body["merchant_nif"], moment.strftime("%Y%m%d%H%M%S%z"),
                        str(number), totals["total"], totals["vat"], b32(hashlib.sha256(unsigned).digest())])
    signature = unb64url(sec["signature"])
    key = keys.get(cred.id) or keys.setdefault(cred.id, load_verifying_key(cred.agent_public_key))
    if not key.verify(signature, message.encode("ascii")):
        return False
    if sec["code"] != auth_code(signature) or not sec["qr_payload"].startswith(f"{message};{b32(signature)}"):
        return False
    if not (type(number) is int and cred.block_start <= number <= cred.block_end and cred.valid_at(moment)):
        return False
    # Columns are what the journal indexes by: they must say what the sealed body says.
    return (row[_ID] == body["id"] and row[_REQUEST_ID] == body["request_id"] and row[_NUMBER] == number
            and row[_AUTHORITY] == sec["authority_id"] and row[_CODE] == sec["code"] and row[_HASH] == hash_hex
            and row[_PREV_HASH] == chain["prev_hash"] and row[_TYPE] == body["type"] and row[_MODE] == "delegated")


def _problems_in_full(row, creds: dict[str, DelegatedCredential], keys: dict, issuer_key: str) -> tuple | None:
    """What is wrong with one stored invoice, rebuilding its canonical forms from its content.

    `(_UNREADABLE, message)`, or `(before_link, of_seal, unknown_credential)`: the problems found
    before the chain link is checked (columns, content hash) and those of the seal itself, in the
    order the walk reports them.
    """
    try:
        # Plain JSON (what our signers write) is canonicalized from fragments encoded once;
        # anything else (floats, huge integers...) through the checked path. Same bytes.
        body, plain = loads_plain(unpack(row["body"]))
        sec = body["security"]
        chain = body["chain"]
    except (ValueError, KeyError, TypeError) as exc:  # UnreadableBody is a ValueError
        return _UNREADABLE, f"stored invoice is unreadable ({exc.__class__.__name__})"
    before: list[str] = []
    # Columns are what the journal indexes by: they must say what the sealed body says.
    for col, val in (("id", body.get("id")), ("request_id", body.get("request_id")),
                     ("fiscal_number", sec.get("fiscal_number")), ("authority_id", sec.get("authority_id")),
                     ("code", sec.get("code")), ("hash", chain.get("hash")),
                     ("prev_hash", chain.get("prev_hash")), ("type", body.get("type")), ("mode", body.get("mode"))):
        if row[col] != val:
            before.append(f"column {col} ({row[col]!r}) differs from the sealed invoice ({val!r})")
    frags = Fragments(body) if plain else None
    if chain.get("hash") != chain_hash(body, trusted=plain, fragments=frags):
        before.append("content does not match its chain hash (the invoice was altered)")
    seal: list[str] = []
    unknown = False
    try:
        _seal_problems(body, sec, plain, frags, creds, keys, issuer_key, seal)
    except (ValueError, KeyError, TypeError) as exc:  # e.g. a timestamp that is not a date
        seal.append(f"security elements are malformed ({exc.__class__.__name__}: {exc})")
    unknown = seal[:1] == [f"sealed with unknown credential {sec.get('authority_id')}"]
    if before or seal:
        return tuple(before), tuple(seal), unknown
    return None


def _seal_problems(body: dict, sec: dict, plain: bool, frags, creds: dict, keys: dict, issuer_key: str,
                   seal: list[str]) -> None:
    mode = body.get("mode")
    number = sec.get("fiscal_number")
    if mode == "delegated":
        cred = creds.get(sec.get("authority_id"))
        if cred is None:
            seal.append(f"sealed with unknown credential {sec.get('authority_id')}")
        else:
            key = keys.get(cred.id) or keys.setdefault(cred.id, load_verifying_key(cred.agent_public_key))
            problems = verify_stalela_seal(body, key, plain=plain, fragments=frags, check_chain=False)
            if problems:
                seal.append("; ".join(problems))
            if not cred.block_start <= number <= cred.block_end:
                seal.append(f"number outside the credential's block {cred.block_start}-{cred.block_end}")
            if not cred.valid_at(datetime.fromisoformat(sec["timestamp"])):
                seal.append("timestamp outside the credential's validity window")
    elif mode == "cloud":
        issuer = keys.get("") or keys.setdefault("", load_verifying_key(issuer_key))
        problems = verify_stalela_seal(body, issuer, plain=plain, fragments=frags, check_chain=False)
        if problems:
            seal.append("; ".join(problems))
    elif mode == "device":
        # The MCF's elements are stored as it returned them: the QR must be built from them.
        # DT is the device's local time: the timestamp carries it with the outlet's offset.
        device_time = datetime.fromisoformat(sec["timestamp"]).strftime("%Y%m%d%H%M%S")
        expected_qr = f"RDCDEF01;{sec['authority_id']};{sec['code']};{body['merchant_nif']};{device_time}"
        if sec["qr_payload"] != expected_qr:
            seal.append("QR payload does not match the device's security elements")


def _check_closed_tail(entry, last_number, fault) -> None:
    # Moving on to the next credential is only valid once the previous one is closed or used up.
    cred, row = entry
    if row["state"] not in ("closed", "revoked") and last_number != cred.block_end:
        fault(f"credential {cred.id}", "a later credential was used while this one was still open")


def iter_count(db_path: Path) -> int:
    conn = connect(db_path, readonly=True)
    try:
        return sealed_count(conn)
    finally:
        conn.close()
