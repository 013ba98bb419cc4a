"""`stalela credential …`: the delegated credential the agent seals with."""
from __future__ import annotations

from datetime import datetime, timezone

import click

from ..cloud_client import CloudClient, CloudError
from ..config import AgentConfig, read_secret
from fiscal.credential import DelegatedCredential
from fiscal.signing import load_private_key, public_key_text
from ..identity import OutletIdentity
from ..signers.credentials import credential_status
from ..store import credentials, tx
from ..store.db import connect, migrate
from .common import EXIT_BLOCKED, data_option, domain_errors, emit_json, json_option, require_enrolled, run_async


def renew_now(config: AgentConfig) -> DelegatedCredential:
    """Fetch a credential from the cloud and store it as ready (the journal activates it)."""
    identity = OutletIdentity.load(config.enrollment_path)
    token = read_secret(config.token_path)

    async def go():
        async with CloudClient(config.cloud_url, token=token, timeout=10) as client:
            return await client.request_credential(block_size=config.block_size)

    cred = run_async(go())
    if cred.outlet_id != identity.outlet_id or not cred.verify(identity.issuer_public_key):
        raise CloudError("the cloud returned a credential that is not for this outlet or not signed by its issuer")
    if cred.agent_public_key != public_key_text(load_private_key(config.key_path)):
        raise CloudError("the credential certifies another agent key")
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        tx.begin_immediate(conn)
        credentials.insert_credential(conn, (
            cred.id, cred.model_dump_json(), cred.block_start, cred.block_end, cred.not_before.isoformat(),
            cred.not_after.isoformat(), datetime.now(timezone.utc).isoformat()))
        tx.commit(conn)
    finally:
        conn.close()
    return cred


@click.group()
def credential() -> None:
    """The delegated credential (block of fiscal numbers + validity) used for offline sealing."""


def sealing_state(st: dict, now: datetime | None = None) -> tuple[bool, str | None]:
    """Can the delegated signer seal, and if not, why (the reasons health uses)."""
    now = now or datetime.now(timezone.utc)
    usable = [c for c in [st["active"], *st["ready"]] if c and c["remaining"] > 0]
    if any(datetime.fromisoformat(c["not_before"]) <= now for c in usable):
        return True, None
    if usable:
        return False, "clock_before_validity"
    active = st["active"]
    if active is None:
        return False, "no_credential"
    return False, "exhausted" if active["next_number"] > active["block"][1] else "expired"


BLOCKED_TEXT = {
    "no_credential": "no usable credential: sealing is blocked (run `stalela credential renew`)",
    "exhausted": "the credential's numbers are used up: sealing is blocked (run `stalela credential renew`)",
    "expired": "the credential has expired: sealing is blocked (run `stalela credential renew`)",
    "clock_before_validity": "the clock reads earlier than the credential's validity: sealing is blocked "
                             "(set the clock right)",
}


@credential.command()
@data_option
@json_option
@domain_errors
def status(data_dir, as_json):
    """Show the active and ready credentials: numbers and time left.

    Exit codes: 0 the outlet can seal with its credential; 1 error (e.g. no enrolled agent in
    --data); 3 it cannot (no numbers left, expired, clock before the validity window).

    \b
    Example:
      stalela credential status --data /var/lib/stalela
      stalela credential status --data /var/lib/stalela --json
    """
    config = require_enrolled(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        st = credential_status(conn)
    finally:
        conn.close()
    can_seal, reason = sealing_state(st)
    if as_json:
        emit_json({"data_dir": str(config.data_dir), "can_seal": can_seal, "reason": reason,
                   "remaining": st["remaining"], "active": st["active"], "ready": st["ready"]})
    else:
        for label, info in [("active", st["active"])] + [("ready", r) for r in st["ready"]]:
            if info:
                click.echo(f"{label}: {info['id']} numbers {info['block'][0]}-{info['block'][1]}, "
                           f"next {info['next_number']}, {info['remaining']} left, expires {info['not_after']} "
                           f"({info['seconds_left'] // 60} min)")
        click.echo(f"numbers available in total: {st['remaining']}")
        if not can_seal:
            click.echo(BLOCKED_TEXT[reason], err=True)
    if not can_seal:
        raise SystemExit(EXIT_BLOCKED)


@credential.command()
@data_option
@domain_errors
def renew(data_dir):
    """Fetch a new credential from the cloud now (kept ready; used when the active one ends).

    \b
    Example:
      stalela credential renew --data /var/lib/stalela
    """
    config = require_enrolled(data_dir)
    cred = renew_now(config)
    click.echo(f"credential {cred.id}: numbers {cred.block_start}-{cred.block_end}, "
               f"valid until {cred.not_after.isoformat()}")
