"""`stalela sync …`: the outbox to the cloud ledger."""
from __future__ import annotations

import asyncio

import click

from ..cloud_client import CloudClient
from ..store.db import connect, migrate
from ..sync import SyncWorker, outbox_status, retry_quarantined
from .common import data_option, domain_errors, load


@click.group()
def sync() -> None:
    """The outbox of sealed invoices waiting for the cloud ledger."""


@sync.command()
@data_option
def status(data_dir):
    """Show what is waiting, what was synced and what the cloud rejected (quarantine).

    Example:

        stalela sync status --data /var/lib/stalela
    """
    config = load(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        st = outbox_status(conn)
    finally:
        conn.close()
    click.echo(f"pending: {st['pending']}" + (f" (oldest sealed {st['oldest_pending']})" if st["pending"] else ""))
    click.echo(f"synced: {st['synced']}")
    click.echo(f"quarantined: {st['quarantined']}")
    for q in st["quarantine"]:
        click.echo(f"  {q['id']} number {q['fiscal_number']} ({q['authority_id']}): {q['reason']}")


@sync.command()
@data_option
@domain_errors
def now(data_dir):
    """Upload the whole outbox now, with progress (the daemon does this by itself too).

    Example:

        stalela sync now --data /var/lib/stalela
    """
    config = load(data_dir)
    migrate(config.db_path)
    token = config.token_path.read_text("utf-8").strip()
    conn = connect(config.db_path)
    total = outbox_status(conn)["pending"]
    conn.close()
    if total == 0:
        click.echo("nothing to upload")
        return

    async def go():
        async with CloudClient(config.cloud_url, token=token, timeout=60) as client:
            worker = SyncWorker(config.db_path, client, batch_size=config.sync_batch_size, attempts=3)
            try:
                with click.progressbar(length=total, label="uploading", file=click.get_text_stream("stderr")) as bar:
                    return await worker.drain(progress=bar.update)
            finally:
                worker.close()

    done = asyncio.run(go())
    conn = connect(config.db_path)
    st = outbox_status(conn)
    conn.close()
    click.echo(f"uploaded {done}; pending {st['pending']}, quarantined {st['quarantined']}")


@sync.command("retry-quarantined")
@data_option
def retry(data_dir):
    """Put the invoices the cloud rejected back in the queue (after the cause was fixed).

    Example:

        stalela sync retry-quarantined --data /var/lib/stalela
    """
    config = load(data_dir)
    conn = connect(config.db_path)
    try:
        n = retry_quarantined(conn)
    finally:
        conn.close()
    click.echo(f"{n} invoice(s) queued again")
