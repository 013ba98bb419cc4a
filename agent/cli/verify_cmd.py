"""`stalela verify`: offline check of a data folder's journal."""
from __future__ import annotations

import click

from ..identity import OutletIdentity
from ..verify import iter_count, verify_journal
from .common import data_option, load


@click.command()
@data_option
@click.option("--all-faults", is_flag=True, help="Keep going after the first fault and list them all.")
def verify(data_dir, all_faults):
    """Verify the journal offline: chains, signatures, numbering, credentials.

    Exit code 0 only when everything holds; otherwise the first fault is named precisely.

    Example:

        stalela verify --data /var/lib/stalela
    """
    config = load(data_dir)
    if not config.db_path.exists() or not config.enrollment_path.exists():
        raise click.ClickException(f"{data_dir} holds no enrolled agent journal")
    identity = OutletIdentity.load(config.enrollment_path)
    total = iter_count(config.db_path)
    show = total >= 5000
    with click.progressbar(length=total, label="verifying", file=click.get_text_stream("stderr"),
                           hidden=not show) as bar:
        report = verify_journal(config.db_path, identity.issuer_public_key, stop_at_first=not all_faults,
                                progress=bar.update)
    if report.ok:
        chains = ", ".join(f"{k}: {v}" for k, v in report.chains.items()) or "no invoices"
        click.echo(f"OK: {report.checked} invoices verified ({chains})")
        return
    for f in report.faults:
        click.echo(f"FAULT: {f}", err=True)
    raise SystemExit(1)
