"""`stalela verify`: offline check of a data folder's journal."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..identity import OutletIdentity
from ..verify import iter_count, verify_journal
from .common import data_option, domain_errors, emit_json, json_option, load, require_enrolled


@click.command()
@data_option
@click.option("--all-faults", is_flag=True, help="Keep going after the first fault and list them all.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Verify an audit export folder (stalela export) instead of a data folder.")
@click.option("--issuer-key", "issuer_key", metavar="FILE_OR_BASE64",
              help="With --export: the cloud issuer's public key the export must be signed under "
                   "(base64url, or a file: the key, a PEM, enrollment.json, GET /v1/issuer's answer). "
                   "Default: the enrollment's, when --data is an enrolled agent's folder.")
@json_option
@domain_errors
def verify(data_dir, all_faults, export_dir, issuer_key, as_json):
    """Verify the journal offline: chains, signatures, numbering, credentials, Z reports.

    Exit code 0 only when everything holds; 1 when a fault is found (the first one is named
    precisely) or the folder holds no enrolled agent. With --export, checks an audit export with
    only its own files (a modified chunk is named), against a pinned issuer key (--issuer-key, or
    the enrolled agent's in --data) so that an export re-signed under another key fails.

    \b
    Example:
      stalela verify --data /var/lib/stalela
      stalela verify --data /var/lib/stalela --all-faults --json
      stalela verify --export /media/usb/audit-2026-11 --data /var/lib/stalela
      stalela verify --export /media/usb/audit-2026-11 --issuer-key ZJBHAlkl5Su7V3ZrkA5oh7Nup4I_FG8oHSHh9rU_Nj0
    """
    if export_dir is not None:
        _verify_export(export_dir, _pinned_issuer(issuer_key, _agent_folder(data_dir)), as_json)
        return
    if issuer_key is not None:
        raise click.UsageError("--issuer-key goes with --export (a data folder's journal is "
                               "always checked against its enrollment's issuer key)")
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


def _agent_folder(data_dir: Path) -> Path:
    """--data as given; left at its default and absent, the current folder when it is an
    enrolled agent's (an auditor who `cd`s into /var/lib/stalela means that agent)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source("data_dir")
    if source is ParameterSource.DEFAULT and not data_dir.is_dir():
        here = Path.cwd()
        if (here / "enrollment.json").exists():
            return here
    return data_dir


def _pinned_issuer(issuer_key: str | None, data_dir: Path) -> tuple[str, str] | None:
    """(issuer key, where it comes from) to pin the export to, or None when there is none."""
    from ..export import ExportError, issuer_key_from

    if issuer_key is not None:
        try:
            return issuer_key_from(issuer_key), "--issuer-key"
        except ExportError as exc:
            raise click.BadParameter(str(exc), param_hint="--issuer-key") from None
    if not data_dir.is_dir():
        return None
    enrollment = load(data_dir).enrollment_path
    if not enrollment.exists():
        return None
    try:
        key = OutletIdentity.load(enrollment).issuer_public_key
    except (OSError, ValueError, TypeError) as exc:
        raise click.ClickException(f"cannot read the issuer key from {enrollment}: {exc.__class__.__name__}") from None
    return (key, f"the enrollment in {data_dir}") if key else None


def _verify_export(export_dir: Path, pinned: tuple[str, str] | None, as_json: bool) -> None:
    from ..export import verify_export

    if not (export_dir / "manifest.json").exists():
        raise click.ClickException(f"{export_dir} holds no audit export (no manifest.json)")
    try:
        total = json.loads((export_dir / "manifest.json").read_text("utf-8"))["counts"]["invoices"]
    except (ValueError, KeyError, TypeError):
        total = 0
    with click.progressbar(length=total, label="verifying export", file=click.get_text_stream("stderr"),
                           hidden=total < 5000 or as_json) as bar:
        report = verify_export(export_dir, issuer_public_key=pinned[0] if pinned else None,
                               progress=bar.update)
    if pinned is None:
        click.echo("note: issuer key not pinned (no --issuer-key, and --data is no enrolled agent): the "
                   "export was checked against the key it names itself, which does not detect an "
                   "export re-signed under another key", err=True)
    trust = f"issuer key pinned from {pinned[1]}" if pinned else "issuer key not pinned"
    if as_json:
        emit_json({"ok": report.ok, "source": "export", "path": str(export_dir), "invoices": report.invoices,
                   "chunks": report.chunks, "z_reports": report.z_reports, "issuer_key_pinned": pinned is not None,
                   "faults": _faults(report.faults)})
    elif report.ok:
        click.echo(f"OK: export verified ({report.invoices} invoices in {report.chunks} chunks, "
                   f"{report.z_reports} Z reports; {trust})")
    else:
        for f in report.faults:
            click.echo(f"FAULT: {f}", err=True)
        if report.issuer_mismatch:
            click.echo(f"The export is not signed under the issuer key pinned from {pinned[1]}: its credentials "
                       "and cloud seals prove nothing about this outlet; do not accept it.", err=True)
    if not report.ok:
        raise SystemExit(1)
