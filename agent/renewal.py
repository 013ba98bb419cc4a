"""Keeps a delegated credential ready before the active one runs low (block or time)."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from .cloud_client import CloudClient, CloudError
from fiscal.credential import BlockClosure, DelegatedCredential
from .journal import credential_status
from .service import AgentService

log = logging.getLogger("stalela.credential")


def needs_renewal(service: AgentService, now: datetime | None = None) -> bool:
    status = credential_status(service.journal.reader, now or datetime.now(timezone.utc))
    if status["ready"]:
        return False
    active = status["active"]
    if active is None or active["remaining"] == 0:
        return True
    return (active["remaining"] < service.config.renew_below_numbers
            or active["seconds_left"] < service.config.renew_before_seconds)


def _renewal_request_id(service: AgentService) -> str:
    # Deterministic for the current state: a retry after a lost answer gets the same credential
    # back from the cloud instead of reserving (and later wasting) another block.
    row = service.journal.reader.execute(
        "SELECT id FROM credentials ORDER BY block_start DESC LIMIT 1").fetchone()
    return f"{service.identity.agent_id}-after-{row['id'] if row else 'enrollment'}"


async def fetch_credential(service: AgentService, client: CloudClient) -> DelegatedCredential:
    cred = await client.request_credential(block_size=service.config.block_size,
                                           request_id=_renewal_request_id(service))
    if cred.outlet_id != service.identity.outlet_id:
        raise CloudError(f"the cloud issued a credential for outlet {cred.outlet_id}, not ours")
    if not cred.verify(service.identity.issuer_public_key):
        raise CloudError("the credential is not signed by the enrolled issuer key")
    from fiscal.signing import load_private_key, public_key_text
    if cred.agent_public_key != public_key_text(load_private_key(service.config.key_path)):
        raise CloudError("the credential certifies another agent key")
    service.journal.add_credential(cred)
    log.info("credential received", extra={"event": "credential.received", "credential": cred.id,
                                           "block": f"{cred.block_start}-{cred.block_end}",
                                           "not_after": cred.not_after.isoformat()})
    return cred


def _write(service: AgentService, fn):
    return asyncio.wrap_future(service.journal.run_in_writer(fn))


class CredentialKeeper:
    """The one owner of credential renewal: logs the first failure and the recovery, not every try."""

    def __init__(self, service: AgentService, client: CloudClient) -> None:
        self.service = service
        self.client = client

    async def check(self) -> None:
        # Renewal first: it is what keeps sales going; closures and revocation checks can wait.
        if needs_renewal(self.service):
            try:
                await fetch_credential(self.service, self.client)
            except CloudError as exc:
                if self.service.last_renewal_error is None:
                    log.warning("credential renewal failed", extra={"event": "credential.renewal_failed",
                                                                    "error": exc.detail})
                self.service.last_renewal_error = exc.detail
            else:
                if self.service.last_renewal_error is not None:
                    log.info("credential renewal recovered", extra={"event": "credential.renewal_recovered"})
                self.service.last_renewal_error = None
        try:
            await self._send_closures()
            await self._check_revocations()
            self.service.cloud_offline = None
        except CloudError as exc:
            # Offline is normal for a shop: it matters only once a renewal is due (above).
            if self.service.cloud_offline is None:
                log.info("cloud unreachable for credential checks", extra={"event": "credential.cloud_offline",
                                                                           "error": exc.detail})
            self.service.cloud_offline = exc.detail

    async def _send_closures(self) -> None:
        """Tell the cloud where closed blocks ended, so their unused tails are void, not gaps."""
        rows = self.service.journal.reader.execute(
            "SELECT id, closure FROM credentials WHERE state = 'closed' AND closure IS NOT NULL"
            " AND closure_sent_at IS NULL").fetchall()
        for row in rows:
            await self.client.close_credential(BlockClosure.model_validate_json(row["closure"]))
            now = datetime.now(timezone.utc).isoformat()
            await _write(self.service, lambda c, cid=row["id"]: c.execute(
                "UPDATE credentials SET closure_sent_at = ? WHERE id = ?", (now, cid)))
            log.info("block closure sent", extra={"event": "credential.closure_sent", "credential": row["id"]})

    async def _check_revocations(self) -> None:
        """Stop using a revoked credential at once (the cloud would reject what it seals)."""
        rows = self.service.journal.reader.execute(
            "SELECT id FROM credentials WHERE state IN ('active', 'ready')").fetchall()
        for row in rows:
            state = await self.client.credential_state(row["id"])
            if state.get("status") == "revoked":
                await _write(self.service, lambda c, cid=row["id"]: c.execute(
                    "UPDATE credentials SET state = 'revoked', closed_at = ? WHERE id = ?",
                    (datetime.now(timezone.utc).isoformat(), cid)))
                log.warning("credential revoked by the cloud", extra={"event": "credential.revoked",
                                                                      "credential": row["id"]})
