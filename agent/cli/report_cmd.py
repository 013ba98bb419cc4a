"""`stalela report x|z|a`: the reports, computed directly on the data folder."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .common import data_option, permission_text, require_enrolled


def _open(data_dir: Path):
    from ..config import zone
    from ..identity import OutletIdentity
    from ..store.db import connect, migrate

    config = require_enrolled(data_dir)
    if not config.db_path.exists():
        raise click.ClickException(f"{data_dir} holds no journal (agent.db) beside its enrollment")
    migrate(config.db_path)
    identity = OutletIdentity.load(config.enrollment_path)
    tz = zone(config.time_zone or identity.time_zone)
    return config, identity, tz, connect(config.db_path)


def _emit(body: dict, fmt: str) -> None:
    from fiscal.report_print import report_text

    if fmt == "json":
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        click.echo(report_text(body), nl=False)


_format = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
                       help="Printable text or the JSON the API returns.")


@click.group()
def report() -> None:
    """X, Z and A reports of this outlet, from the journal.

    \b
    Example:
      stalela report x --data /var/lib/stalela
    """


@report.command("x")
@data_option
@_format
def report_x(data_dir, fmt):
    """Running totals since the last Z (changes nothing).

    \b
    Example:
      stalela report x --data /var/lib/stalela --format json
    """
    from ..reports import offline_health, x_report

    _, identity, tz, conn = _open(data_dir)
    try:
        _emit(x_report(conn, identity, offline_health(conn), tz=tz), fmt)
    finally:
        conn.close()


@report.command("z")
@data_option
@_format
def report_z(data_dir, fmt):
    """Close the day: seal, number and chain a Z report; the next X starts from zero.

    Safe while the daemon runs: the Z is computed and stored in one write transaction,
    which SQLite serializes with sealing.

    \b
    Example:
      stalela report z --data /var/lib/stalela
    """
    import sqlite3

    from fiscal.signing import load_private_key
    from ..reports import close_z, notify_z_closed, offline_health
    from ..store import tx

    config, identity, tz, conn = _open(data_dir)
    try:
        try:
            key = load_private_key(config.key_path)
        except PermissionError as exc:
            raise click.ClickException(permission_text(exc)) from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read the agent key {config.key_path}: {exc}") from None
        try:
            with tx.immediate(conn):
                body = close_z(conn, identity, key, offline_health(conn), tz=tz)
        except sqlite3.OperationalError as exc:
            raise click.ClickException(f"the journal is busy or unwritable: {exc}") from None
    finally:
        conn.close()
    notify_z_closed(body)
    _emit(body, fmt)


@report.command("a")
@data_option
@click.option("--from", "start", metavar="YYYY-MM-DD", help="First day (outlet's zone). Default: today.")
@click.option("--to", "end", metavar="YYYY-MM-DD", help="Last day, inclusive. Default: the first day.")
@_format
def report_a(data_dir, start, end, fmt):
    """Article-level lines of the invoices sealed in a period.

    \b
    Example:
      stalela report a --data /var/lib/stalela --from 2026-11-01 --to 2026-11-30
    """
    from ..reports import BadPeriod, a_report_for

    _, identity, tz, conn = _open(data_dir)
    try:
        try:
            body = a_report_for(conn, identity, tz, start, end)
        except BadPeriod as exc:
            raise click.ClickException(str(exc)) from None
        _emit(body, fmt)
    finally:
        conn.close()
