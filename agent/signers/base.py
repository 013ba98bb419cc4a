"""The signer seam: what every way of sealing an invoice offers the policy.

Four implementations sit behind it: the MCF device (agent/device/signer.py), the cloud's online
signer (signers/cloud.py), the delegated credential (signers/delegated.py) and the queue of
drafts (signers/queued.py). The policy (signers/policy.py) walks them in the configured order,
each behind its own circuit breaker, and knows none of them by name.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..journal import SealJob, SealOutcome

# What a signer says of itself for health: it can seal, its link is down, or it is out of
# what it needs to seal (the delegated credential's numbers or time).
SignerState = Literal["available", "unavailable", "blocked"]


class SignerUnavailable(Exception):
    """The signer could not seal and did NOT seal: the next signer of the policy may be tried.

    A signer that is unsure whether it sealed must not raise this (it would risk two fiscal
    numbers for one sale); it raises an AgentError instead so the POS retries the same request_id.
    """

    def __init__(self, signer: str, reason: str, *, link_failed: bool = True) -> None:
        super().__init__(f"{signer}: {reason}")
        self.signer = signer
        self.reason = reason
        # False when the signer works but refused this one invoice: its breaker stays closed,
        # so the next sale still tries it first.
        self.link_failed = link_failed


class Signer(Protocol):
    """One way to seal. `seal` either returns the sealed (or, for drafts, stored) invoice, raises
    SignerUnavailable (nothing sealed; try the next), SealingBlocked (this signer cannot seal
    now; try the next) or another AgentError (the POS gets it as is)."""

    name: str
    # True when this signer answers a retried request_id itself, inside its sealing transaction
    # (the journal's writer does): the API then need not look the request up first.
    answers_retries: bool
    # True for the queue of drafts: skipped when drafts themselves are being sealed.
    keeps_drafts: bool
    # True when the seal comes from outside the box (the MCF, the cloud): the outlet is online
    # in the cashier's sense while it seals.
    online: bool

    async def seal(self, job: "SealJob") -> "SealOutcome": ...

    def state(self) -> SignerState: ...

    def health(self) -> dict[str, Any]: ...


@runtime_checkable
class Probing(Protocol):
    """A signer whose link can be checked cheaply: the daemon's probe closes its breaker as soon
    as it answers again (one owner per source)."""

    async def probe(self) -> bool: ...


@runtime_checkable
class Settling(Protocol):
    """A signer with unfinished business to settle with its authority once it answers again
    (the cloud: the attempts it never answered, superseded by another signer's seal)."""

    async def settle(self) -> int: ...


class Breaker:
    """One signer's circuit breaker. The cashier's budget is small, so a signer that just failed
    (device unplugged, cloud down) is skipped for `seconds` instead of making every following
    invoice wait for the same timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.open_until = 0.0
        self.reason = ""

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def trip(self, reason: str) -> None:
        self.open_until = time.monotonic() + self.seconds
        self.reason = reason

    def reset(self) -> None:
        self.open_until = 0.0
        self.reason = ""
