"""Sealing and verifying invoices in the Stalela modes (`delegated`, `cloud`), and the hash chain.

The security elements of a Stalela-sealed invoice:

* **message** `M = RDCSTL01;{authority};{NIF};{DT};{FN};{TTC};{VAT};{DIGEST}` where DIGEST is the
  base32 SHA-256 of the canonical (RFC 8785) *unsigned view* of the invoice (everything but the
  code, QR, signature, chain hash and sync state). Signing M therefore signs the whole record,
  while the receipt-visible facts stay readable in the QR.
* **signature** Ed25519 over M by the credential's agent key (delegated) or the cloud signer.
* **code** the 24-char authentication code = base32(SHA-256(signature))[:24].
* **QR payload** `M;{SIG_B32}` for `cloud`, `M;{SIG_B32};{OUTLET};{AGENT_PUB_B32};{START};{END};
  {NOT_BEFORE};{NOT_AFTER};{ISSUER_SIG_B32}` for `delegated`: with only the issuer's public key,
  an inspector checks the credential, then the invoice signature, the number's block and the time.

The chain: `chain.hash = SHA-256(canonical(invoice without sync and without chain.hash))`, and
`chain.prev_hash` is the previous invoice's hash in the same authority chain (or 64 zeros).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .canonical import Fragments, canonical_bytes, compose, sha256_hex
from .credential import DelegatedCredential, parse_utc_compact, utc_compact
from .protocol import STALELA_QR_TAG
from .signing import auth_code, b32, b64url, load_public_key, unb32, unb64url, verify



def qr_time(timestamp: str) -> str:
    """`2025-03-01T12:25:47+01:00` → `20250301122547+0100` (local time with its offset)."""
    moment = datetime.fromisoformat(timestamp)
    return moment.strftime("%Y%m%d%H%M%S%z")


def unsigned_view(invoice: dict[str, Any]) -> dict[str, Any]:
    # Shallow copies only: this runs twice per seal, and the nested data is never modified.
    view = {k: v for k, v in invoice.items() if k != "sync"}
    view["chain"] = {"prev_hash": invoice["chain"]["prev_hash"]}
    view["security"] = {k: v for k, v in invoice["security"].items()
                        if k not in ("code", "qr_payload", "signature")}
    return view


def chain_view(invoice: dict[str, Any]) -> dict[str, Any]:
    view = dict(invoice)
    view.pop("sync", None)
    view["chain"] = {"prev_hash": invoice["chain"]["prev_hash"]}
    return view


def _canonical(view: dict[str, Any], trusted: bool, fragments: Fragments | None) -> bytes:
    # Trusted data (built by a signer from validated models) takes the fast path, reusing the
    # fragments encoded at validation; anything else goes through the checked canonicalization.
    return compose(view, fragments).encode("utf-8") if trusted else canonical_bytes(view)


def chain_hash(invoice: dict[str, Any], *, trusted: bool = False, fragments: Fragments | None = None) -> str:
    return sha256_hex(_canonical(chain_view(invoice), trusted, fragments))


def record_digest(invoice: dict[str, Any], *, trusted: bool = False, fragments: Fragments | None = None) -> bytes:
    return hashlib.sha256(_canonical(unsigned_view(invoice), trusted, fragments)).digest()


def seal_message(invoice: dict[str, Any], *, trusted: bool = False, fragments: Fragments | None = None) -> str:
    sec = invoice["security"]
    return ";".join([
        STALELA_QR_TAG, sec["authority_id"], invoice["merchant_nif"], qr_time(sec["timestamp"]),
        str(sec["fiscal_number"]), invoice["totals"]["total"], invoice["totals"]["vat"],
        b32(record_digest(invoice, trusted=trusted, fragments=fragments)),
    ])


def credential_qr_part(cred: DelegatedCredential) -> str:
    return ";".join([
        cred.outlet_id, b32(unb64url(cred.agent_public_key)), str(cred.block_start),
        str(cred.block_end), utc_compact(cred.not_before), utc_compact(cred.not_after),
        b32(unb64url(cred.signature)),
    ])


def apply_signature(invoice: dict[str, Any], signer_key, credential: DelegatedCredential | None,
                    *, credential_part: str | None = None, fragments: Fragments | None = None) -> dict[str, Any]:
    """Fill code, signature, QR payload and chain hash of an invoice whose other fields are set.

    `invoice` is the JSON form (dict) built by the signer from validated models, with
    `security.code/qr_payload/signature` and `chain.hash` still to be filled; it is modified in
    place and returned. `credential_part` may carry a cached `credential_qr_part(credential)`;
    `fragments` the canonical texts of its bulky values, encoded once at validation.
    """
    message = seal_message(invoice, trusted=True, fragments=fragments)
    signature = signer_key.sign(message.encode("ascii"))
    sec = invoice["security"]
    sec["signature"] = b64url(signature)
    sec["code"] = auth_code(signature)
    qr = f"{message};{b32(signature)}"
    if credential is not None:
        qr += ";" + (credential_part or credential_qr_part(credential))
    sec["qr_payload"] = qr
    invoice["chain"]["hash"] = chain_hash(invoice, trusted=True, fragments=fragments)
    return invoice


def verify_stalela_seal(invoice: dict[str, Any], signer_public_key, *, plain: bool = False,
                        fragments: Fragments | None = None, check_chain: bool = True) -> list[str]:
    """Problems with a Stalela seal (empty list = valid). Does not check chain continuity.

    `signer_public_key` is the key's text or the loaded key. A caller that has checked the data is
    plain JSON (`canonical.is_plain`) passes `plain=True` and may pass the invoice's `fragments`:
    the canonical forms are then assembled from them instead of being encoded from scratch.
    `check_chain=False` leaves the chain hash to a caller that checks it itself.
    """
    problems: list[str] = []
    sec = invoice["security"]
    try:
        signature = unb64url(sec.get("signature") or "")
    except ValueError:
        return ["signature is not base64url"]
    message = seal_message(invoice, trusted=plain, fragments=fragments)
    key = load_public_key(signer_public_key) if isinstance(signer_public_key, str) else signer_public_key
    if not verify(key, signature, message.encode("ascii")):
        problems.append("signature does not match the invoice content")
    if sec.get("code") != auth_code(signature):
        problems.append("authentication code does not derive from the signature")
    if not str(sec.get("qr_payload", "")).startswith(f"{message};{b32(signature)}"):
        problems.append("QR payload does not match the sealed content")
    if check_chain and invoice["chain"].get("hash") != chain_hash(invoice, trusted=plain, fragments=fragments):
        problems.append("chain hash does not match the invoice content")
    return problems


@dataclass(frozen=True)
class QrCheck:
    valid: bool
    reason: str
    authority_id: str = ""
    fiscal_number: int = 0
    total: str = ""


def verify_qr(payload: str, issuer_public_key: str) -> QrCheck:
    """What an inspector does offline with a scanned delegated/cloud QR and the issuer's key."""
    parts = payload.split(";")
    if not parts or parts[0] != STALELA_QR_TAG or len(parts) not in (9, 16):
        return QrCheck(False, "not a Stalela QR payload")
    message = ";".join(parts[:8])
    _, authority, nif, dt, fn, total, _vat, _digest = parts[:8]
    try:
        signature = unb32(parts[8])
        number = int(fn)
        moment = datetime.strptime(dt, "%Y%m%d%H%M%S%z")
    except ValueError:
        return QrCheck(False, "malformed QR payload")
    if len(parts) == 9:  # cloud-sealed: signed by the issuer itself
        signer = issuer_public_key
    else:
        outlet, pub_b32, start, end, nb, na, issuer_sig = parts[9:]
        agent_pub = b64url(unb32(pub_b32))
        cred_msg = DelegatedCredential.message_for(
            id=authority, outlet_id=outlet, merchant_nif=nif, agent_public_key=agent_pub,
            block_start=int(start), block_end=int(end), not_before=parse_utc_compact(nb),
            not_after=parse_utc_compact(na),
        )
        if not verify(load_public_key(issuer_public_key), unb32(issuer_sig), cred_msg):
            return QrCheck(False, "credential not signed by the issuer", authority, number, total)
        if not int(start) <= number <= int(end):
            return QrCheck(False, "fiscal number outside the credential's block", authority, number, total)
        if not parse_utc_compact(nb) <= moment < parse_utc_compact(na):
            return QrCheck(False, "timestamp outside the credential's validity", authority, number, total)
        signer = agent_pub
    if not verify(load_public_key(signer), signature, message.encode("ascii")):
        return QrCheck(False, "invoice signature invalid", authority, number, total)
    return QrCheck(True, "valid", authority, number, total)
