"""SIG, the "code DEF/DGI" of a normalized invoice: 24 characters of [A-Z0-9].

A real MCF derives it from secrets provisioned by the DGI; the simulator uses HMAC-SHA256 keyed
with a per-device random secret kept in its fiscal memory, so a SIG is deterministic for one
device and the same content, and cannot be forged without that device's secret.
"""
from __future__ import annotations

import hashlib
import hmac

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIG_LENGTH = 24  # 36**24 is about 2**124: the digest's first 124 bits survive


def compute_sig(secret: bytes, fields: list[str]) -> str:
    """SIG over the invoice content; length prefixes keep the encoding of the fields injective."""
    message = "".join(f"{len(f)}:{f}" for f in fields).encode("utf-8")
    number = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest(), "big")
    chars = []
    for _ in range(SIG_LENGTH):
        number, digit = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[digit])
    return "".join(chars)
