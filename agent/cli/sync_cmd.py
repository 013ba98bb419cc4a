"""`stalela sync …`: the outbox to the cloud ledger."""
from __future__ import annotations

import asyncio

import click

from ..cloud_client import CloudClient
from ..config import read_secret
from ..store.db import connect, migrate
from ..sync import SyncWorker, outbox_status, retry_quarantined
from .common import data_option, domain_errors, emit_json, json_option, require_enrolled


@click.group()
def sync() -> None:
    """The outbox of sealed invoices waiting for the cloud ledger."""


@sync.command()
@data_option
@json_option
@domain_errors
def status(data_dir, as_json):
    """Show what is waiting, what was synced and what the cloud rejected (quarantine).

    Exit codes: 0 shown; 1 error (e.g. no enrolled agent in --data).

    \b
    Example:
      stalela sync status --data /var/lib/stalela
      stalela sync status --data /var/lib/stalela --json
    """
    config = require_enrolled(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        st = outbox_status(conn)
    finally:
        conn.close()
    if as_json:
        # Named field by field: the documented shape does not follow outbox_status's internals.
        emit_json({"data_dir": str(config.data_dir), "pending": st["pending"],
                   "oldest_pending": st["oldest_pending"], "synced": st["synced"],
                   "quarantined": st["quarantined"],
                   "quarantine": [{"id": q["id"], "fiscal_number": q["fiscal_number"],
                                   "authority_id": q["authority_id"], "reason": q["reason"]}
                                  for q in st["quarantine"]]})
        return
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

    \b
    Example:
      stalela sync now --data /var/lib/stalela
    """
    config = require_enrolled(data_dir)
    migrate(config.db_path)
    token = read_secret(config.token_path)
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
@domain_errors
def retry(data_dir):
    """Put the invoices the cloud rejected back in the queue (after the cause was fixed).

    \b
    Example:
      stalela sync retry-quarantined --data /var/lib/stalela
    """
    config = require_enrolled(data_dir)
    conn = connect(config.db_path)
    try:
        n = retry_quarantined(conn)
    finally:
        conn.close()
    click.echo(f"{n} invoice(s) queued again")
