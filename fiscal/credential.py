"""Delegated credentials: the cloud's certificate that lets one agent seal offline, within bounds.

A credential binds the agent's public key to one outlet, a block of fiscal numbers
`[block_start, block_end]` and a validity window, and is signed by the cloud's issuer key.
What is signed is a compact text form (`message()`), so an inspector can re-check it from the
fields printed in a receipt's QR code without any JSON tooling.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import AwareDatetime, Field, model_validator

from .models import Strict
from .protocol import CLOSURE_TAG, CREDENTIAL_TAG
from .signing import b64url, load_public_key, sign, unb64url, verify



def utc_compact(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


def parse_utc_compact(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)


class DelegatedCredential(Strict):
    id: Annotated[str, Field(pattern=r"^[A-Z0-9-]{1,40}$")]
    outlet_id: Annotated[str, Field(pattern=r"^[A-Z0-9-]{1,40}$")]
    merchant_nif: str
    agent_public_key: str
    block_start: int
    block_end: int
    not_before: AwareDatetime
    not_after: AwareDatetime
    issuer_key_id: str
    signature: str

    @model_validator(mode="after")
    def _bounds(self) -> "DelegatedCredential":
        if not (1 <= self.block_start <= self.block_end):
            raise ValueError("block must satisfy 1 <= start <= end")
        if self.not_after <= self.not_before:
            raise ValueError("validity window is empty")
        return self

    @staticmethod
    def message_for(*, id: str, outlet_id: str, merchant_nif: str, agent_public_key: str,
                    block_start: int, block_end: int, not_before: datetime,
                    not_after: datetime) -> bytes:
        return ";".join([
            CREDENTIAL_TAG, id, outlet_id, merchant_nif, agent_public_key, str(block_start),
            str(block_end), utc_compact(not_before), utc_compact(not_after),
        ]).encode("ascii")

    def message(self) -> bytes:
        return self.message_for(
            id=self.id, outlet_id=self.outlet_id, merchant_nif=self.merchant_nif,
            agent_public_key=self.agent_public_key, block_start=self.block_start,
            block_end=self.block_end, not_before=self.not_before, not_after=self.not_after,
        )

    @classmethod
    def issue(cls, issuer_key, issuer_key_id: str, **fields) -> "DelegatedCredential":
        signature = sign(issuer_key, cls.message_for(**fields))
        return cls(**fields, issuer_key_id=issuer_key_id, signature=b64url(signature))

    def verify(self, issuer_public_key: str) -> bool:
        return verify(load_public_key(issuer_public_key), unb64url(self.signature), self.message())

    def size(self) -> int:
        return self.block_end - self.block_start + 1

    def valid_at(self, moment: datetime) -> bool:
        return self.not_before <= moment < self.not_after


class BlockClosure(Strict):
    """The agent's signed statement that it used a block only up to `last_used`.

    Numbers after `last_used` are then void, not a gap. `last_used = block_start - 1` means the
    block was not used at all.
    """

    credential_id: str
    last_used: int
    signature: str

    @staticmethod
    def message_for(credential_id: str, last_used: int) -> bytes:
        return f"{CLOSURE_TAG};{credential_id};{last_used}".encode("ascii")

    @classmethod
    def make(cls, agent_key, credential_id: str, last_used: int) -> "BlockClosure":
        sig = sign(agent_key, cls.message_for(credential_id, last_used))
        return cls(credential_id=credential_id, last_used=last_used, signature=b64url(sig))

    def verify(self, agent_public_key: str) -> bool:
        return verify(load_public_key(agent_public_key), unb64url(self.signature),
                      self.message_for(self.credential_id, self.last_used))
