"""Signer selection: an ordered list of signers, each behind its own breaker.

The first signer that can seal does; one that could not (and did not) hands the invoice to the
next at once, so a dead link never keeps a cashier waiting. The order comes from the
configuration (`[signer] policy`); the policy itself knows no signer by name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AgentError, SealingBlocked
from .base import Breaker, Signer, SignerUnavailable

if TYPE_CHECKING:
    from ..journal import SealJob, SealOutcome

log = logging.getLogger("stalela.agent")


@dataclass(frozen=True)
class PolicyEntry:
    signer: Signer
    breaker: Breaker

    @property
    def name(self) -> str:
        return self.signer.name

    def state(self) -> str:
        if not self.breaker.allows():
            return "unavailable: " + self.breaker.reason
        return self.signer.state()


class SignerPolicy:
    def __init__(self, entries: list[PolicyEntry], *, not_configured: tuple[str, ...] = (),
                 order: tuple[str, ...] = ()) -> None:
        self.entries = entries
        # Names in the configured policy with no signer behind them (no device URL, no cloud
        # token): shown in health, never tried.
        self.not_configured = not_configured
        self.order = order or tuple(e.name for e in entries)

    def entry(self, name: str) -> PolicyEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def first_answers_retries(self) -> bool:
        """True when the first signer the policy would try answers retried requests itself."""
        return bool(self.entries) and self.entries[0].signer.answers_retries

    async def seal(self, job: "SealJob", *, allow_drafts: bool = True) -> "SealOutcome":
        unavailable: list[str] = []
        blocked: SealingBlocked | None = None
        for entry in self.entries:
            if entry.signer.keeps_drafts and not allow_drafts:
                continue
            if not entry.breaker.allows():
                unavailable.append(f"{entry.name}: {entry.breaker.reason or 'unavailable'}")
                continue
            try:
                return await entry.signer.seal(job)
            except SignerUnavailable as exc:
                if exc.link_failed:
                    entry.breaker.trip(exc.reason)
                log.warning("signer unavailable", extra={"event": "signer.unavailable", "signer": entry.name,
                                                          "reason": exc.reason})
                unavailable.append(f"{entry.name}: {exc.reason}")
            except SealingBlocked as exc:
                # Out of numbers or time: not a link failure, so no breaker; the next signer may seal.
                if blocked is None:
                    blocked = exc
                    others = list(unavailable)
                unavailable.append(f"{entry.name}: {exc.reason}")
            except AgentError as exc:
                if exc.extra.get("reason", "").endswith("outcome_unknown"):
                    # The link is bad: spare the next invoices the same wait.
                    entry.breaker.trip(exc.detail)
                raise
        if blocked is not None:
            if others:
                blocked.detail += " (also unavailable: " + "; ".join(others) + ")"
            raise blocked
        raise SealingBlocked("no signer of the policy can seal: " + ("; ".join(unavailable) or "none configured"),
                             reason="no_signer")

    def next_entry(self) -> PolicyEntry | None:
        """The signer the next invoice would use, for health (without side effects)."""
        for entry in self.entries:
            if entry.breaker.allows() and entry.signer.state() == "available":
                return entry
        return None

    def states(self) -> dict[str, str]:
        """Each configured signer's state, in the configured order."""
        out: dict[str, str] = {}
        for name in self.order:
            entry = self.entry(name)
            out[name] = entry.state() if entry is not None else "not configured"
        return out

    def health_of(self, name: str) -> dict[str, Any] | None:
        entry = self.entry(name)
        return entry.signer.health() if entry is not None else None

    def reachable(self, name: str) -> bool:
        """The signer is configured, its breaker closed and it says it is available."""
        entry = self.entry(name)
        return entry is not None and entry.breaker.allows() and entry.signer.state() == "available"
