"""Option bundles, exit codes and error handling shared by the CLI commands."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import click

from fiscal.runtime.cli import clean_errors

from ..config import AgentConfig, ConfigError, load_config
from ..errors import AgentError, CloudError

# Exit codes, the same for every command (documented in docs/cli.md and in the commands' help).
EXIT_OK = 0        # done; for a status command: the outlet can seal
EXIT_ERROR = 1     # a clean one-line error (bad input, no enrolled agent, invalid configuration…)
EXIT_USAGE = 2     # click's usage errors (unknown option, bad value)
EXIT_BLOCKED = 3   # the command worked, and what it found means the outlet cannot seal

SERVICE_USER = "stalela"


def data_option(func):
    return click.option(
        # readable=False: an unreadable folder is ours to explain (run as its owner), not click's.
        "--data", "data_dir", type=click.Path(file_okay=False, readable=False, path_type=Path),
        default=Path("stalela-data"), envvar="STALELA_DATA", show_default=True, show_envvar=True,
        help="The agent's data folder.")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object instead of text (fields: docs/cli.md).")(func)


def emit_json(body: object) -> None:
    click.echo(json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True))


def load(data_dir: Path) -> AgentConfig:
    try:
        return load_config(data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def not_enrolled_text(data_dir: Path) -> str:
    return (f"no enrolled agent in {data_dir} (no enrollment.json): run `stalela agent init --data "
            f"{data_dir}` then `stalela agent enroll --data {data_dir} --token …`, or pass --data "
            "(or STALELA_DATA) naming the agent's data folder (/var/lib/stalela on an outlet box)")


def require_enrolled(data_dir: Path) -> AgentConfig:
    """The configuration of an enrolled agent's folder, checked before anything touches it.

    Why: a command pointed at a wrong or missing folder used to create an empty journal there and
    report that all was well. Nothing is created here; a folder that is not an enrolled agent's is
    refused with what to do.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not os.access(data_dir, os.R_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(data_dir))
    if not (data_dir / "enrollment.json").is_file():
        raise click.ClickException(not_enrolled_text(data_dir))
    return load(data_dir)


def permission_text(exc: OSError) -> str:
    """One line for a permission error, naming the file and who can open it."""
    if exc.errno is None:
        return str(exc)  # raised by our own checks (a key or token readable by others): it says the fix
    target = Path(exc.filename) if exc.filename else None
    owner = _owner(target) if target else None
    me = _user()
    who = owner if owner and owner != me else SERVICE_USER
    where = f" {target}" if target else ""
    text = f"permission denied:{where}"
    if owner and owner == me:
        return f"{text} (yours, but its mode forbids it: see docs/operations.md \"Data folder\")"
    return (f"{text}{f' (owned by {owner})' if owner else ''}: run the command as the service user, "
            f"e.g. `sudo -u {who} stalela …`")


def _owner(path: Path) -> str | None:
    import pwd

    for candidate in (path, *path.parents):
        try:
            uid = candidate.stat().st_uid
        except OSError:
            continue
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)
    return None


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _explain(exc: BaseException) -> str | None:
    if isinstance(exc, (CloudError, AgentError)):
        return exc.detail
    if isinstance(exc, PermissionError):
        return permission_text(exc)
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename}"
    return None


# Domain errors become clean CLI messages (no tracebacks) at the CLI boundary only.
domain_errors = clean_errors(_explain)


def clean_os_errors(exc: BaseException) -> click.ClickException | None:
    """The one-line error for an OS or SQLite error that reached the top, or None."""
    if isinstance(exc, PermissionError):
        return click.ClickException(permission_text(exc))
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "readonly" in text or "unable to open" in text:
            return click.ClickException(f"cannot open or write the journal ({text}): check who owns the data "
                                        f"folder; run the command as its owner, e.g. `sudo -u {SERVICE_USER} "
                                        "stalela …`")
        return click.ClickException(f"journal error: {text}")
    return None


def run_async(coro):
    return asyncio.run(coro)
