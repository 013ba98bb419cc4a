"""Signer selection: an ordered policy with short timeouts and a circuit breaker per signer.

The cashier's budget is small, so a signer that just failed (device unplugged, cloud down) is
skipped for `breaker_seconds` instead of making every following invoice wait for the same
timeout; a background probe closes the breaker as soon as the signer answers again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


class SignerUnavailable(Exception):
    """The signer could not seal and did NOT seal: the next signer of the policy may be tried.

    A signer that is unsure whether it sealed must not raise this (it would risk two fiscal
    numbers for one sale); it raises an AgentError instead so the POS retries the same request_id.
    """

    def __init__(self, signer: str, reason: str) -> None:
        super().__init__(f"{signer}: {reason}")
        self.signer = signer
        self.reason = reason


@dataclass
class Breaker:
    seconds: float
    open_until: dict[str, float] = field(default_factory=dict)
    last_reason: dict[str, str] = field(default_factory=dict)

    def allows(self, signer: str) -> bool:
        return time.monotonic() >= self.open_until.get(signer, 0.0)

    def trip(self, signer: str, reason: str) -> None:
        self.open_until[signer] = time.monotonic() + self.seconds
        self.last_reason[signer] = reason

    def reset(self, signer: str) -> None:
        self.open_until.pop(signer, None)
        self.last_reason.pop(signer, None)

    def state(self, signer: str) -> str:
        return "open" if not self.allows(signer) else "closed"
