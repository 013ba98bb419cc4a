"""Keys, signatures and the codes derived from them.

Ed25519 throughout: small keys and signatures (they must fit in a QR code with room to spare),
deterministic, and fast to verify, which is what the cloud's reconciliation rate needs.
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_open
from nacl.exceptions import BadSignatureError

CODE_LENGTH = 24


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B32_PAIRS = [a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"]


def b32(data: bytes) -> str:
    """Upper-case base32 without padding: QR alphanumeric-friendly and easy to read aloud.

    Exactly `base64.b32encode(data)` without its `=` padding, in about half the time (the
    standard library's encoder is pure Python in 3.11, and every seal check encodes three
    values): the bytes as one integer, read 10 bits (two characters) at a time.
    """
    n = len(data)
    pad = -n % 5  # base32 works on 5-byte groups: pad with zero bytes, cut the characters after
    value = int.from_bytes(data, "big") << (8 * pad)
    pairs = _B32_PAIRS
    text = "".join([pairs[(value >> shift) & 0x3FF] for shift in range(8 * (n + pad) - 10, -1, -10)])
    return text[:(8 * n + 4) // 5]


def unb32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64url: how keys travel in credentials and APIs."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    raw = unb64url(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class VerifyingKey:
    """An Ed25519 public key that checks many signatures: libsodium first, OpenSSL on a refusal.

    Why two libraries: libsodium verifies in about half the time OpenSSL takes here (≈ 58 µs
    against ≈ 115 µs), and verification is the largest cost of the cloud's reconciliation and of
    `stalela verify`. Why OpenSSL still decides every refusal: libsodium is stricter (it also
    refuses small-order keys and points, and non-canonical encodings), so a signature it accepts
    is one OpenSSL accepts (same hash, same equation, same encoding compared), but not the other
    way round. Asking OpenSSL whenever libsodium says no makes every answer OpenSSL's, exactly
    as before, at full cost only for signatures that are refused anyway or crafted.
    tests/agent/test_signing.py checks the two agree on valid, damaged and crafted signatures.
    """

    __slots__ = ("raw", "key")

    def __init__(self, raw: bytes):
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = raw
        self.key = Ed25519PublicKey.from_public_bytes(raw)  # raises ValueError for a bad key

    def verify(self, signature: bytes, message: bytes) -> bool:
        if len(signature) == 64:
            try:
                crypto_sign_open(signature + message, self.raw)
                return True
            except BadSignatureError:
                pass
        return verify(self.key, signature, message)


def load_verifying_key(text: str) -> VerifyingKey:
    """`load_public_key` for a key that will check many signatures (see VerifyingKey)."""
    return VerifyingKey(unb64url(text))


def weak_public_key(text: str) -> bool:
    """True for a key no honest key generator makes: a small-order point or a non-canonical
    encoding (libsodium refuses to convert one). Under a small-order key, one forged signature
    can verify for many messages, and OpenSSL accepts such signatures: registering such a key
    is refused instead. `text` must already load (`load_public_key`)."""
    try:
        crypto_sign_ed25519_pk_to_curve25519(unb64url(text))
    except RuntimeError:  # PyNaCl's answer to libsodium's -1
        return True
    return False


def key_id(public_key: str) -> str:
    """A short, stable name for a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(public_key.encode("ascii")).hexdigest()[:16]


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key readable by its owner only (0600), created that way from the start."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"private key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(public_key: Ed25519PublicKey | VerifyingKey, signature: bytes, message: bytes) -> bool:
    if type(public_key) is VerifyingKey:
        return public_key.verify(signature, message)
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def auth_code(signature: bytes) -> str:
    """The 24-character authentication code printed on the receipt, derived from the signature.

    Same alphabet family as the device's SIG ([A-Z2-7] here), so receipts look alike whoever sealed.
    """
    # 15 bytes are exactly 24 characters: the same code as encoding the whole digest and cutting.
    return b32(hashlib.sha256(signature).digest()[:CODE_LENGTH * 5 // 8])
