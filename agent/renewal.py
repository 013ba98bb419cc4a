"""Keeps a delegated credential ready before the active one runs low (block or time)."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from .cloud_client import CloudClient, CloudError
from .fiscal.credential import DelegatedCredential
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


async def fetch_credential(service: AgentService, client: CloudClient) -> DelegatedCredential:
    cred = await client.request_credential(block_size=service.config.block_size)
    if cred.outlet_id != service.identity.outlet_id:
        raise CloudError(f"the cloud issued a credential for outlet {cred.outlet_id}, not ours")
    if not cred.verify(service.identity.issuer_public_key):
        raise CloudError("the credential is not signed by the enrolled issuer key")
    from .fiscal.signing import load_private_key, public_key_text
    if cred.agent_public_key != public_key_text(load_private_key(service.config.key_path)):
        raise CloudError("the credential certifies another agent key")
    service.journal.add_credential(cred)
    log.info("credential received", extra={"event": "credential.received", "credential": cred.id,
                                           "block": f"{cred.block_start}-{cred.block_end}",
                                           "not_after": cred.not_after.isoformat()})
    return cred


class CredentialKeeper:
    """The one owner of credential renewal: logs the first failure and the recovery, not every try."""

    def __init__(self, service: AgentService, client: CloudClient) -> None:
        self.service = service
        self.client = client

    async def check(self) -> None:
        if not needs_renewal(self.service):
            return
        try:
            await fetch_credential(self.service, self.client)
        except CloudError as exc:
            if self.service.last_renewal_error is None:
                log.warning("credential renewal failed", extra={"event": "credential.renewal_failed",
                                                                "error": exc.detail})
            self.service.last_renewal_error = exc.detail
            return
        if self.service.last_renewal_error is not None:
            log.info("credential renewal recovered", extra={"event": "credential.renewal_recovered"})
        self.service.last_renewal_error = None
