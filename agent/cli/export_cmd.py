"""`stalela export`: the audit export (chunked JSON Lines + manifest), verifiable offline."""
from __future__ import annotations

from pathlib import Path

import click

from .common import data_option, require_enrolled


@click.command()
@data_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A new (or empty) folder to write the export into.")
@click.option("--from", "start", metavar="YYYY-MM-DD", help="First day of the period (outlet's zone).")
@click.option("--to", "end", metavar="YYYY-MM-DD", help="Last day of the period, inclusive.")
@click.option("--chunk-size", default=10000, show_default=True, type=click.IntRange(1, 10_000_000),
              help="Invoices per chunk file.")
def export(data_dir, out_dir, start, end, chunk_size):
    """Export the journal (or a period) for an audit: chunk-NNNNN.jsonl files, z-reports.jsonl
    and manifest.json (hashes of every file, chains, credentials, issuer key).

    Check it anywhere, offline, with `stalela verify --export OUTDIR`.

    \b
    Example:
      stalela export --data /var/lib/stalela --out /media/usb/audit-2026-11 --from 2026-11-01 --to 2026-11-30
    """
    from ..config import zone
    from ..export import ExportError, export_journal
    from ..identity import OutletIdentity
    from ..reports import BadPeriod
    from ..store import tx
    from ..store.db import connect
    from ..store.invoices import sealed_count

    config = require_enrolled(data_dir)
    if not config.db_path.exists():
        raise click.ClickException(f"{data_dir} holds no journal (agent.db) beside its enrollment")
    identity = OutletIdentity.load(config.enrollment_path)
    tz = zone(config.time_zone or identity.time_zone)
    conn = connect(config.db_path, readonly=True)
    try:
        # One read transaction: a consistent snapshot even while the daemon seals.
        tx.begin_read(conn)
        total = sealed_count(conn)
        with click.progressbar(length=total, label="exporting", file=click.get_text_stream("stderr")) as bar:
            manifest = export_journal(conn, identity, out_dir, start=start, end=end, tz=tz,
                                      chunk_size=chunk_size, progress=bar.update)
        tx.commit(conn)
    except (ExportError, BadPeriod) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the export: {exc}") from None
    finally:
        conn.close()
    c = manifest["counts"]
    click.echo(f"exported {c['invoices']} invoices in {c['chunks']} chunks and {c['z_reports']} Z reports to {out_dir}")
