"""`stalela credential …`: the delegated credential the agent seals with."""
from __future__ import annotations

from datetime import datetime, timezone

import click

from ..cloud_client import CloudClient, CloudError
from ..config import AgentConfig
from fiscal.credential import DelegatedCredential
from fiscal.signing import load_private_key, public_key_text
from ..identity import OutletIdentity
from ..journal import credential_status
from ..store.db import connect, migrate
from .common import data_option, domain_errors, load, run_async


def renew_now(config: AgentConfig) -> DelegatedCredential:
    """Fetch a credential from the cloud and store it as ready (the journal activates it)."""
    identity = OutletIdentity.load(config.enrollment_path)
    token = config.token_path.read_text("utf-8").strip()

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
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR IGNORE INTO credentials(id, body, block_start, block_end, next_number, not_before,"
            " not_after, state, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?)",
            (cred.id, cred.model_dump_json(), cred.block_start, cred.block_end, cred.block_start,
             cred.not_before.isoformat(), cred.not_after.isoformat(), datetime.now(timezone.utc).isoformat()))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return cred


@click.group()
def credential() -> None:
    """The delegated credential (block of fiscal numbers + validity) used for offline sealing."""


@credential.command()
@data_option
@domain_errors
def status(data_dir):
    """Show the active and ready credentials: numbers and time left.

    Example:

        stalela credential status --data /var/lib/stalela
    """
    config = load(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        st = credential_status(conn)
    finally:
        conn.close()
    if st["active"] is None and not st["ready"]:
        click.echo("no usable credential: sealing is blocked (run `stalela credential renew`)")
        raise SystemExit(1)
    for label, info in [("active", st["active"])] + [("ready", r) for r in st["ready"]]:
        if info:
            click.echo(f"{label}: {info['id']} numbers {info['block'][0]}-{info['block'][1]}, "
                       f"next {info['next_number']}, {info['remaining']} left, expires {info['not_after']} "
                       f"({info['seconds_left'] // 60} min)")
    click.echo(f"numbers available in total: {st['remaining']}")


@credential.command()
@data_option
@domain_errors
def renew(data_dir):
    """Fetch a new credential from the cloud now (kept ready; used when the active one ends).

    Example:

        stalela credential renew --data /var/lib/stalela
    """
    config = load(data_dir)
    cred = renew_now(config)
    click.echo(f"credential {cred.id}: numbers {cred.block_start}-{cred.block_end}, "
               f"valid until {cred.not_after.isoformat()}")
