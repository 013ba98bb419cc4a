"""Keeps a delegated credential ready before the active one runs low (block or time)."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from fiscal.credential import BlockClosure, DelegatedCredential
from fiscal.signing import load_private_key, public_key_text

from .cloud_client import CloudClient, CloudError
from .config import AgentConfig
from .identity import OutletIdentity
from .journal import Journal
from .signers.credentials import credential_status
from .store import credentials as store

log = logging.getLogger("stalela.credential")


def needs_renewal(journal: Journal, config: AgentConfig, now: datetime | None = None) -> bool:
    status = credential_status(journal.reader, now or datetime.now(timezone.utc))
    if status["ready"]:
        return False
    active = status["active"]
    if active is None or active["remaining"] == 0:
        return True
    return (active["remaining"] < config.renew_below_numbers
            or active["seconds_left"] < config.renew_before_seconds)


def _renewal_request_id(journal: Journal, identity: OutletIdentity) -> str:
    # Deterministic for the current state: a retry after a lost answer gets the same credential
    # back from the cloud instead of reserving (and later wasting) another block.
    latest = store.latest_id(journal.reader)
    return f"{identity.agent_id}-after-{latest or 'enrollment'}"


async def fetch_credential(journal: Journal, identity: OutletIdentity, config: AgentConfig,
                           client: CloudClient) -> DelegatedCredential:
    cred = await client.request_credential(block_size=config.block_size,
                                           request_id=_renewal_request_id(journal, identity))
    if cred.outlet_id != identity.outlet_id:
        raise CloudError(f"the cloud issued a credential for outlet {cred.outlet_id}, not ours")
    if not cred.verify(identity.issuer_public_key):
        raise CloudError("the credential is not signed by the enrolled issuer key")
    if cred.agent_public_key != public_key_text(load_private_key(config.key_path)):
        raise CloudError("the credential certifies another agent key")
    journal.add_credential(cred)
    log.info("credential received", extra={"event": "credential.received", "credential": cred.id,
                                           "block": f"{cred.block_start}-{cred.block_end}",
                                           "not_after": cred.not_after.isoformat()})
    return cred


class CredentialKeeper:
    """The one owner of credential renewal: logs the first failure and the recovery, not every try.

    What it last learnt of the cloud is health's to show: `last_renewal_error` (renewal is due
    and failed) and `cloud_offline` (the cloud could not be reached for credential checks).
    """

    def __init__(self, journal: Journal, identity: OutletIdentity, config: AgentConfig,
                 client: CloudClient) -> None:
        self.journal = journal
        self.identity = identity
        self.config = config
        self.client = client
        self.last_renewal_error: str | None = None
        self.cloud_offline: str | None = None

    def _write(self, fn):
        return asyncio.wrap_future(self.journal.run_in_writer(fn))

    async def check(self) -> None:
        # Renewal first: it is what keeps sales going; closures and revocation checks can wait.
        if needs_renewal(self.journal, self.config):
            try:
                await fetch_credential(self.journal, self.identity, self.config, self.client)
            except CloudError as exc:
                if self.last_renewal_error is None:
                    log.warning("credential renewal failed", extra={"event": "credential.renewal_failed",
                                                                    "error": exc.detail})
                self.last_renewal_error = exc.detail
            else:
                if self.last_renewal_error is not None:
                    log.info("credential renewal recovered", extra={"event": "credential.renewal_recovered"})
                self.last_renewal_error = None
        try:
            await self._send_closures()
            await self._check_revocations()
            self.cloud_offline = None
        except CloudError as exc:
            # Offline is normal for a shop: it matters only once a renewal is due (above).
            if self.cloud_offline is None:
                log.info("cloud unreachable for credential checks", extra={"event": "credential.cloud_offline",
                                                                           "error": exc.detail})
            self.cloud_offline = exc.detail

    async def _send_closures(self) -> None:
        """Tell the cloud where closed blocks ended, so their unused tails are void, not gaps."""
        rows = store.unsent_closures(self.journal.reader)
        for row in rows:
            await self.client.close_credential(BlockClosure.model_validate_json(row["closure"]))
            now = datetime.now(timezone.utc).isoformat()
            await self._write(lambda c, cid=row["id"]: store.mark_closure_sent(c, cid, now))
            log.info("block closure sent", extra={"event": "credential.closure_sent", "credential": row["id"]})

    async def _check_revocations(self) -> None:
        """Stop using a revoked credential at once (the cloud would reject what it seals)."""
        rows = store.unfinished_ids(self.journal.reader)
        for row in rows:
            state = await self.client.credential_state(row["id"])
            if state.get("status") == "revoked":
                await self._write(lambda c, cid=row["id"]: store.revoke(
                    c, cid, datetime.now(timezone.utc).isoformat()))
                log.warning("credential revoked by the cloud", extra={"event": "credential.revoked",
                                                                      "credential": row["id"]})
