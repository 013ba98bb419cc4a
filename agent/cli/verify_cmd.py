"""`stalela verify`: offline check of a data folder's journal."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..identity import OutletIdentity
from ..verify import iter_count, verify_journal
from .common import data_option, domain_errors, emit_json, json_option, require_enrolled


@click.command()
@data_option
@click.option("--all-faults", is_flag=True, help="Keep going after the first fault and list them all.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Verify an audit export folder (stalela export) instead of a data folder.")
@json_option
@domain_errors
def verify(data_dir, all_faults, export_dir, as_json):
    """Verify the journal offline: chains, signatures, numbering, credentials, Z reports.

    Exit code 0 only when everything holds; 1 when a fault is found (the first one is named
    precisely) or the folder holds no enrolled agent. With --export, checks an audit export with
    only its own files (a modified chunk is named).

    \b
    Example:
      stalela verify --data /var/lib/stalela
      stalela verify --data /var/lib/stalela --all-faults --json
      stalela verify --export /media/usb/audit-2026-11
    """
    if export_dir is not None:
        _verify_export(export_dir, as_json)
        return
    config = require_enrolled(data_dir)
    if not config.db_path.exists():
        raise click.ClickException(f"{data_dir} holds no journal (agent.db) beside its enrollment")
    identity = OutletIdentity.load(config.enrollment_path)
    total = iter_count(config.db_path)
    show = total >= 5000 and not as_json
    with click.progressbar(length=total, label="verifying", file=click.get_text_stream("stderr"),
                           hidden=not show) as bar:
        report = verify_journal(config.db_path, identity.issuer_public_key, stop_at_first=not all_faults,
                                progress=bar.update)
    if as_json:
        emit_json({"ok": report.ok, "source": "journal", "path": str(config.data_dir),
                   "invoices": report.checked, "chains": report.chains, "faults": _faults(report.faults)})
    elif report.ok:
        chains = ", ".join(f"{k}: {v}" for k, v in report.chains.items()) or "no invoices"
        click.echo(f"OK: {report.checked} invoices verified ({chains})")
    else:
        for f in report.faults:
            click.echo(f"FAULT: {f}", err=True)
    if not report.ok:
        raise SystemExit(1)


def _faults(faults) -> list[dict]:
    return [{"where": f.where, "problem": f.problem} for f in faults]


def _verify_export(export_dir: Path, as_json: bool) -> None:
    from ..export import verify_export

    if not (export_dir / "manifest.json").exists():
        raise click.ClickException(f"{export_dir} holds no audit export (no manifest.json)")
    try:
        total = json.loads((export_dir / "manifest.json").read_text("utf-8"))["counts"]["invoices"]
    except (ValueError, KeyError, TypeError):
        total = 0
    with click.progressbar(length=total, label="verifying export", file=click.get_text_stream("stderr"),
                           hidden=total < 5000 or as_json) as bar:
        report = verify_export(export_dir, progress=bar.update)
    if as_json:
        emit_json({"ok": report.ok, "source": "export", "path": str(export_dir), "invoices": report.invoices,
                   "chunks": report.chunks, "z_reports": report.z_reports, "faults": _faults(report.faults)})
    elif report.ok:
        click.echo(f"OK: export verified ({report.invoices} invoices in {report.chunks} chunks, "
                   f"{report.z_reports} Z reports)")
    else:
        for f in report.faults:
            click.echo(f"FAULT: {f}", err=True)
    if not report.ok:
        raise SystemExit(1)
