"""Audit export: the journal (or a period) as chunked JSON Lines with a manifest, verifiable
offline with nothing but the export itself (`stalela verify --export DIR`).

Layout of OUTDIR:

    chunk-00001.jsonl ...  one sealed invoice per line, byte for byte as stored, in sealing order
    z-reports.jsonl        the Z reports (sealed bodies as stored), in number order
    manifest.json          outlet, merchant NIF, issuer public key, credentials (public data),
                           counts, per-chain first/last hashes and numbers, SHA-256 of each file
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fiscal.protocol import GENESIS_HASH, chain_key
from fiscal.credential import BlockClosure, DelegatedCredential
from fiscal.seal import chain_hash, verify_stalela_seal
from fiscal.signing import load_public_key, public_key_text
from .verify import Fault, verify_z_chain
from .store import export as store
from .store.bodies import unpack
from .store.reports import z_reports_for_export

FORMAT = "stalela-audit-export/1"
Z_FILE = "z-reports.jsonl"


def chunk_name(n: int) -> str:
    return f"chunk-{n:05d}.jsonl"


class ExportError(Exception):
    pass


def export_journal(conn: sqlite3.Connection, identity, out_dir: Path, *, start: str | None = None,
                   end: str | None = None, tz=None, chunk_size: int = 10000,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the export (streamed: one chunk in memory at most a line at a time); returns the manifest."""
    from .reports.core import period_bounds

    if chunk_size < 1:
        raise ExportError("chunk size must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty: export into a new folder")
    lo = hi = None
    if start or end:
        lo, hi = period_bounds(start, end, tz)
    chains: dict[str, dict[str, Any]] = {}
    chunks: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    fh = None
    digest = None
    total = 0

    def close_chunk() -> None:
        nonlocal fh, current
        if fh is not None:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            current["sha256"] = digest.hexdigest()
            chunks.append(current)
            fh, current = None, None

    window: tuple[str | None, str | None] = (None, None)
    if lo is not None:
        from datetime import timedelta
        window = ((lo - timedelta(days=1)).date().isoformat(), (hi + timedelta(days=1)).date().isoformat())
    for row in store.sealed_for_export(conn, *window):
        body_text = unpack(row["body"])
        inv = json.loads(body_text)
        if lo is not None and not lo <= datetime.fromisoformat(inv["security"]["timestamp"]) < hi:
            continue
        if fh is None:
            current = {"file": chunk_name(len(chunks) + 1), "count": 0, "first_seq": row["seq"], "last_seq": None}
            fh = open(out_dir / current["file"], "wb")
            digest = hashlib.sha256()
        line = body_text.encode("utf-8") + b"\n"
        fh.write(line)
        digest.update(line)
        current["count"] += 1
        current["last_seq"] = row["seq"]
        total += 1
        c = chains.setdefault(row["chain_key"], {"count": 0, "first_number": inv["security"]["fiscal_number"],
                                                 "first_prev_hash": inv["chain"]["prev_hash"]})
        c["count"] += 1
        c["last_number"] = inv["security"]["fiscal_number"]
        c["last_hash"] = inv["chain"]["hash"]
        if progress:
            progress(1)
        if current["count"] >= chunk_size:
            close_chunk()
    close_chunk()

    # Z reports (all of them, or those created in the period)
    z_digest = hashlib.sha256()
    z_info: dict[str, Any] = {"file": Z_FILE, "count": 0}
    with open(out_dir / Z_FILE, "wb") as zf:
        for row in z_reports_for_export(conn):
            if lo is not None and not lo <= datetime.fromisoformat(row["created_at"]) < hi:
                continue
            line = row["body"].encode("utf-8") + b"\n"
            zf.write(line)
            z_digest.update(line)
            if z_info["count"] == 0:
                z_info["first_number"] = row["number"]
                z_info["first_prev_hash"] = row["prev_hash"]
            z_info["count"] += 1
            z_info["last_number"] = row["number"]
            z_info["last_hash"] = row["hash"]
        zf.flush()
        os.fsync(zf.fileno())
    z_info["sha256"] = z_digest.hexdigest()

    credentials = []
    for r in store.credentials_in_order(conn):
        credentials.append({"credential": json.loads(r["body"]), "state": r["state"],
                            "closure": json.loads(r["closure"]) if r["closure"] else None})
    # Retention discarded acknowledged invoices: where each chain now starts (agent/retention.py).
    anchors = {r["chain_key"]: {"last_hash": r["last_hash"], "last_number": r["last_number"],
                                "discarded": r["discarded"]}
               for r in store.chain_anchors_if_any(conn)}
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "outlet_id": identity.outlet_id, "outlet_name": identity.outlet_name,
        "merchant_nif": identity.merchant_nif, "merchant_name": identity.merchant_name, "isf": identity.isf,
        "issuer_public_key": identity.issuer_public_key,
        "period": {"from": lo.isoformat(), "to": hi.isoformat()} if lo is not None else None,
        "credentials": credentials,
        "counts": {"invoices": total, "z_reports": z_info["count"], "chunks": len(chunks)},
        "chains": dict(sorted(chains.items())),
        "anchors": anchors,
        "chunks": chunks,
        "z_reports": z_info,
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    tmp.replace(out_dir / "manifest.json")
    return manifest


# ------------------------------------------------------------------------------ verification


@dataclass
class ExportReport:
    invoices: int = 0
    z_reports: int = 0
    chunks: int = 0
    faults: list[Fault] = field(default_factory=list)
    manifest_issuer: str | None = None  # the issuer key the export names for itself
    issuer_mismatch: bool = False  # a pinned issuer key was given and the export names another

    @property
    def ok(self) -> bool:
        return not self.faults


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def issuer_key_from(value: str) -> str:
    """The issuer public key an auditor pins, as base64url text, from what they were given.

    `value` is a file (the key's text, a PEM public key, the agent's enrollment.json, or the
    cloud's `GET /v1/issuer` or enrollment answer) or the key's base64url text itself.
    Raises ExportError when it is none of these.
    """
    text = value.strip()
    path = Path(value).expanduser()
    if path.is_file():
        try:
            text = path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"cannot read the issuer key file {path}: {exc.__class__.__name__}") from None
        origin = f"the file {path}"
    else:
        origin = repr(value)
    candidate = _key_text_in(text)
    try:
        return public_key_text(load_public_key(candidate))
    except (ValueError, TypeError):
        raise ExportError(f"{origin} is neither a file holding an Ed25519 public key nor the key's "
                          "base64url text (e.g. the issuer_public_key of the agent's enrollment.json)") from None


def _key_text_in(text: str) -> str:
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return text
        if isinstance(data, dict):
            return str(data.get("issuer_public_key") or data.get("public_key") or "")
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
            return public_key_text(key)  # type: ignore[arg-type]
        except (ValueError, TypeError, UnicodeEncodeError):
            return ""
    return text


def verify_export(out_dir: Path, *, issuer_public_key: str | None = None,
                  progress: Callable[[int], None] | None = None, max_faults: int = 50) -> ExportReport:
    """Check an export offline: file hashes against the manifest (naming a modified chunk),
    credentials against the issuer key, then every invoice's hash, chain link, signature, block
    and numbering, then the Z chain.

    `issuer_public_key` pins the issuer: credentials and cloud seals must verify under it, and
    a manifest naming another key is a fault. Without it the manifest's own key is used, which
    proves the export consistent but not that the cloud issued its credentials: anyone can
    re-sign an export under a key of their own and name that key in the manifest."""
    rep = ExportReport()

    def fault(where: str, problem: str) -> None:
        if len(rep.faults) < max_faults:
            rep.faults.append(Fault(where, problem))

    try:
        manifest = json.loads((out_dir / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        fault("manifest.json", f"missing or unreadable ({exc.__class__.__name__})")
        return rep
    if manifest.get("format") != FORMAT:
        fault("manifest.json", f"unknown format {manifest.get('format')!r}")
        return rep
    rep.manifest_issuer = manifest.get("issuer_public_key")
    issuer = issuer_public_key or rep.manifest_issuer
    if not issuer:
        fault("manifest.json", "names no issuer key, and none was pinned")
        return rep
    if issuer_public_key and issuer_public_key != rep.manifest_issuer:
        rep.issuer_mismatch = True
        fault("manifest.json", f"names issuer key {rep.manifest_issuer}, not the pinned issuer key "
                               f"{issuer_public_key}: the export was signed under another issuer "
                               "(re-signed, or from another cloud)")

    # 1. files
    listed = {c["file"] for c in manifest["chunks"]} | {Z_FILE, "manifest.json"}
    for extra in sorted(p.name for p in out_dir.iterdir() if p.name not in listed):
        fault(extra, "file not listed in the manifest")
    for c in manifest["chunks"] + [manifest["z_reports"]]:
        path = out_dir / c["file"]
        if not path.exists():
            fault(c["file"], "missing")
        elif _sha256_file(path) != c["sha256"]:
            fault(c["file"], "SHA-256 differs from the manifest: this file was modified")

    # 2. credentials
    creds: dict[str, DelegatedCredential] = {}
    for entry in manifest["credentials"]:
        try:
            cred = DelegatedCredential.model_validate(entry["credential"])
        except ValueError:
            fault("manifest.json", "a credential is unreadable")
            continue
        if not _signed_by(cred, issuer):
            fault(f"credential {cred.id}", "not signed by the pinned issuer key" if issuer_public_key
                  else "not signed by the issuer key")
        if entry.get("closure"):
            closure = BlockClosure.model_validate(entry["closure"])
            if closure.credential_id != cred.id or not closure.verify(cred.agent_public_key):
                fault(f"credential {cred.id}", "block closure statement is not validly signed")
        creds[cred.id] = cred

    # 3. invoices, in order
    state: dict[str, dict[str, Any]] = {}
    full = manifest.get("period") is None
    for c in manifest["chunks"]:
        path = out_dir / c["file"]
        if not path.exists():
            continue
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                rep.invoices += 1
                if progress:
                    progress(1)
                where = f"{c['file']} line {lineno}"
                try:
                    inv = json.loads(raw)
                    sec = inv["security"]
                    where += f" (invoice {inv['id']}, fiscal number {sec['fiscal_number']}, " \
                             f"authority {sec['authority_id']})"
                    key = chain_key(inv["mode"], outlet_id=inv["outlet_id"], authority_id=sec["authority_id"])
                except (ValueError, KeyError, TypeError):
                    fault(where, "not a readable sealed invoice")
                    continue
                _check_invoice(inv, key, state, manifest, creds, issuer, full, where, fault)
    for key, info in manifest["chains"].items():
        st = state.get(key)
        if st is None or st["count"] != info["count"]:
            fault(f"chain {key}", f"the manifest lists {info['count']} invoices, the chunks hold "
                                  f"{st['count'] if st else 0}")
        elif st["hash"] != info["last_hash"]:
            fault(f"chain {key}", "the last invoice is not the chain end the manifest records")
    if manifest["counts"]["invoices"] != rep.invoices:
        fault("manifest.json", f"counts {manifest['counts']['invoices']} invoices, the chunks hold {rep.invoices}")
    rep.chunks = len(manifest["chunks"])

    # 4. Z reports
    zpath = out_dir / Z_FILE
    if zpath.exists():
        bodies = []
        for lineno, raw in enumerate(zpath.read_bytes().splitlines(), start=1):
            try:
                bodies.append(json.loads(raw))
            except ValueError:
                fault(f"{Z_FILE} line {lineno}", "not a readable report")
        rep.z_reports = len(bodies)
        z = manifest["z_reports"]
        keys = {c.agent_public_key for c in creds.values()} or None
        start_prev = z.get("first_prev_hash", GENESIS_HASH) if bodies else GENESIS_HASH
        start_number = (z.get("first_number", 1) - 1) if bodies else 0
        for f in verify_z_chain(bodies, keys, prev_hash=start_prev, prev_number=start_number):
            fault(f.where, f.problem)
        if bodies and bodies[-1].get("hash") != z.get("last_hash"):
            fault(Z_FILE, "the last Z report is not the one the manifest records")
    return rep


def _signed_by(cred: DelegatedCredential, issuer: str) -> bool:
    try:
        return cred.verify(issuer)
    except ValueError:  # an issuer key that does not load: nothing verifies under it
        return False


def _check_invoice(inv, key, state, manifest, creds, issuer, full, where, fault) -> None:
    sec = inv["security"]
    st = state.get(key)
    if st is None:
        info = manifest["chains"].get(key)
        if info is None:
            fault(where, f"belongs to chain {key}, which the manifest does not list")
            info = {"first_prev_hash": inv["chain"]["prev_hash"]}
        st = state[key] = {"hash": info["first_prev_hash"], "number": None, "cred": None, "count": 0,
                           "anchored": info["first_prev_hash"] != GENESIS_HASH}
        anchor = (manifest.get("anchors") or {}).get(key)
        if full and st["anchored"] and (anchor is None or anchor["last_hash"] != info["first_prev_hash"]):
            fault(where, "the chain does not start at its beginning nor at a recorded retention anchor "
                         "(invoices are missing before this one)")
    st["count"] += 1
    cred = creds.get(sec["authority_id"]) if inv["mode"] == "delegated" else None
    if cred is None and inv["chain"].get("hash") != chain_hash(inv):
        # (for a delegated invoice verify_stalela_seal below checks the chain hash too)
        fault(where, "content does not match its chain hash (the invoice was altered)")
    if inv["chain"].get("prev_hash") != st["hash"]:
        fault(where, "chain broken: prev_hash does not match the previous invoice "
                     "(an invoice was removed, inserted or reordered)")
    st["hash"] = inv["chain"].get("hash")
    number = sec["fiscal_number"]
    if inv["mode"] == "delegated":
        if cred is None:
            fault(where, f"sealed with credential {sec['authority_id']}, which the manifest does not hold")
        else:
            problems = verify_stalela_seal(inv, cred.agent_public_key)
            if problems:
                fault(where, "; ".join(problems))
            if not cred.block_start <= number <= cred.block_end:
                fault(where, f"number outside the credential's block {cred.block_start}-{cred.block_end}")
            if not cred.valid_at(datetime.fromisoformat(sec["timestamp"])):
                fault(where, "timestamp outside the credential's validity window")
            if st["cred"] == cred.id:
                expected = st["number"] + 1
            elif st["cred"] is not None or (full and not st["anchored"]):
                expected = cred.block_start
            else:
                expected = number  # a period export may start inside a block
            if number != expected:
                kind = "repeated" if st["number"] is not None and number <= st["number"] else "skipped"
                fault(where, f"numbering {kind}: expected {expected}, found {number}")
            st["cred"] = cred.id
    elif inv["mode"] == "cloud":
        # Sealed by the cloud itself, under the issuer key.
        try:
            problems = verify_stalela_seal(inv, issuer, check_chain=False)
        except (ValueError, KeyError, TypeError) as exc:
            problems = [f"security elements are malformed ({exc.__class__.__name__})"]
        if problems:
            fault(where, "; ".join(problems))
    elif inv["mode"] == "device":
        device_time = datetime.fromisoformat(sec["timestamp"]).strftime("%Y%m%d%H%M%S")
        expected_qr = f"RDCDEF01;{sec['authority_id']};{sec['code']};{inv['merchant_nif']};{device_time}"
        if sec["qr_payload"] != expected_qr:
            fault(where, "QR payload does not match the device's security elements")
        if st["number"] is not None and number != st["number"] + 1:
            fault(where, f"device counter {'repeated' if number <= st['number'] else 'skipped'}: "
                         f"expected {st['number'] + 1}, found {number}")
    st["number"] = number
