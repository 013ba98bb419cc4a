"""The e-MCF's bearer tokens: HS256 JWTs, one per point of sale (NIF + ISF).

Hand-rolled (RFC 7519 / 7515, HS256 only) rather than a new dependency: twenty lines of
standard-library HMAC, and the simulator only ever verifies tokens it issued itself.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass


class TokenError(Exception):
    """A token that is malformed, badly signed (`code` TOKEN_INVALID) or expired (TOKEN_EXPIRED)."""

    def __init__(self, code: str, desc: str):
        super().__init__(desc)
        self.code = code
        self.desc = desc


@dataclass(frozen=True)
class PointOfSale:
    nif: str
    isf: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, nif: str, isf: str, ttl_seconds: int, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": f"{nif}/{isf}", "nif": nif, "isf": isf, "iat": issued, "exp": issued + ttl_seconds}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def verify(secret: bytes, token: str, now: float | None = None) -> PointOfSale:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("TOKEN_INVALID", "the token is not a JWT")
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        signature = _unb64(parts[2])
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("TOKEN_INVALID", "the token is not a JWT") from None
    if not hmac.compare_digest(signature, expected) or not isinstance(header, dict) \
            or header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise TokenError("TOKEN_INVALID", "the token was not issued by this e-MCF")
    exp, nif, isf = claims.get("exp"), claims.get("nif"), claims.get("isf")
    if not isinstance(exp, int) or not isinstance(nif, str) or not isinstance(isf, str):
        raise TokenError("TOKEN_INVALID", "the token lacks nif, isf or exp")
    if exp <= (now if now is not None else time.time()):
        raise TokenError("TOKEN_EXPIRED", "the token has expired: ask the DGI for a new one")
    return PointOfSale(nif=nif, isf=isf, expires=exp)
