"""`stalela agent …`: set up, enroll and run the agent; manage POS API keys."""
from __future__ import annotations

import asyncio
import errno
import socket

import click

from .. import logs
from ..cloud_client import CloudClient
from ..config import ConfigError, DRC_ZONES, Settings, ensure_data_dir, write_default_config, write_secret
from fiscal.signing import generate_private_key, public_key_text, save_private_key
from ..identity import OutletIdentity
from ..store.db import connect, migrate
from .common import (data_option, domain_errors, emit_json, json_option, load,
                     require_enrolled, run_async)

_DEFAULTS = Settings.model_construct()  # the model's defaults, without the environment


@click.group()
def agent() -> None:
    """Set up, enroll and run the local fiscal service."""


@agent.command()
@data_option
@click.option("--cloud", "cloud_url", default=_DEFAULTS.cloud.url, show_default=True, help="Cloud base URL.")
@click.option("--port", type=int, default=_DEFAULTS.agent.port, show_default=True,
              help="Port of the POS API on 127.0.0.1.")
@click.option("--tz", "time_zone", type=click.Choice(DRC_ZONES), default=None,
              help="Outlet time zone (default: the one recorded for the outlet at enrollment).")
@click.option("--allow-insecure-http", is_flag=True,
              help="Accept a plain http:// cloud URL that is not this machine (a test bench only).")
def init(data_dir, cloud_url, port, time_zone, allow_insecure_http):
    """Create a data folder (0700) with a default config.toml and an empty journal.

    \b
    Example:
      stalela agent init --data /var/lib/stalela --cloud https://cloud.example.cd
    """
    if (data_dir / "config.toml").exists():
        raise click.ClickException(f"{data_dir} already has a config.toml; edit it instead")
    overrides = {"cloud__url": cloud_url, "agent__port": port}
    if allow_insecure_http:
        overrides["cloud__allow_insecure_http"] = True
    if time_zone:
        overrides["agent__time_zone"] = time_zone
    try:
        write_default_config(data_dir, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    migrate(data_dir / "agent.db")
    click.echo(f"initialised {data_dir} (config: {data_dir / 'config.toml'})")


def _read_token(token: str) -> str:
    """The enrollment token: given as is, `-` for standard input, or @FILE for a file's first line.

    Why not only argv: a token on the command line is visible to every user in `ps` and stays in
    the shell's history.
    """
    if token == "-":
        text = click.get_text_stream("stdin").readline()
    elif token.startswith("@"):
        try:
            text = open(token[1:], encoding="utf-8").readline()
        except OSError as exc:
            raise click.ClickException(f"cannot read the token file {token[1:]}: {exc.strerror}") from None
    else:
        text = token
    text = text.strip()
    if not text:
        raise click.ClickException("the enrollment token is empty")
    return text


@agent.command()
@data_option
@click.option("--token", required=True, metavar="TOKEN|-|@FILE",
              help="One-time enrollment token from the cloud operator; `-` reads it from standard input, "
                   "@FILE from a file (neither shows it in `ps`).")
@click.option("--label", default=None, help="A name for this box (default: the host name).")
@domain_errors
def enroll(data_dir, token, label):
    """Enroll with the cloud: make the agent key pair, register it, fetch a first credential.

    The private key is written to keys/agent.key, readable by its owner only (0600).

    \b
    Example:
      stalela agent enroll --data /var/lib/stalela --token -  < token.txt
      stalela agent enroll --data /var/lib/stalela --token @/root/enrollment-token
    """
    token = _read_token(token)
    if not (data_dir / "config.toml").is_file():
        raise click.ClickException(f"no agent data folder at {data_dir} (no config.toml): run `stalela agent init "
                                   f"--data {data_dir}` first, or pass --data naming the agent's folder")
    config = load(data_dir)
    ensure_data_dir(config.data_dir)
    if config.enrollment_path.exists():
        raise click.ClickException(f"{data_dir} is already enrolled (outlet in {config.enrollment_path})")
    migrate(config.db_path)
    key = generate_private_key()
    save_private_key(key, config.key_path)

    async def go():
        async with CloudClient(config.cloud_url, timeout=10) as client:
            answer = await client.enroll(token, public_key_text(key), label or socket.gethostname())
        return answer

    answer = run_async(go())
    outlet = answer["outlet"]
    write_secret(config.token_path, answer["agent_token"])
    identity = OutletIdentity(
        outlet_id=outlet["id"], outlet_name=outlet.get("name", ""), merchant_nif=outlet["merchant_nif"],
        merchant_name=outlet.get("merchant_name", ""), time_zone=outlet.get("time_zone", "Africa/Kinshasa"),
        isf=outlet.get("isf") or f"STL-{outlet['id']}", agent_id=answer["agent_id"],
        issuer_public_key=answer["issuer_public_key"], taxpayer=outlet.get("taxpayer") or {},
    )
    identity.save(config.enrollment_path)
    click.echo(f"enrolled as agent {identity.agent_id} of outlet {identity.outlet_id} "
               f"(merchant NIF {identity.merchant_nif})")
    from .credential_cmd import renew_now
    cred = renew_now(config)
    click.echo(f"credential {cred.id}: numbers {cred.block_start}-{cred.block_end}, "
               f"valid until {cred.not_after.isoformat()}")


@agent.command()
@data_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@domain_errors
def run(data_dir, log_level):
    """Run the daemon: the POS API on 127.0.0.1, sealing, credential renewal.

    Logs are JSON lines on stderr, one per event. Stops cleanly on SIGTERM / Ctrl-C.

    \b
    Example:
      stalela agent run --data /var/lib/stalela
    """
    from ..daemon import serve
    from ..service import NotEnrolled

    config = require_enrolled(data_dir)
    migrate(config.db_path)
    logs.setup(log_level)
    try:
        asyncio.run(serve(config))
    except NotEnrolled as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(f"port {config.port} on {config.host} is already in use") from None
        if exc.errno in (errno.EACCES, errno.EADDRNOTAVAIL):
            raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        raise


@agent.group()
def keys() -> None:
    """POS API keys (one per terminal; shown once, stored hashed)."""


@keys.command("create")
@data_option
@click.argument("name")
@click.option("--api", "api", type=click.Choice(["v1", "emcf", "both"]), default="both", show_default=True,
              help="The API the key may call: the POS API (/v1), the local e-MCF API (/api) or both.")
@domain_errors
def keys_create(data_dir, name, api):
    """Create an API key for a POS terminal and print it once.

    \b
    Example:
      stalela agent keys create --data /var/lib/stalela POS-01
      stalela agent keys create --data /var/lib/stalela --api emcf ERP-01
    """
    from ..api.keys import create_key

    config = require_enrolled(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        key = create_key(conn, name, api)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        conn.close()
    click.echo(key)


@keys.command("list")
@data_option
@json_option
@domain_errors
def keys_list(data_dir, as_json):
    """List API keys (names and dates; the keys themselves are not stored).

    \b
    Example:
      stalela agent keys list --data /var/lib/stalela
      stalela agent keys list --data /var/lib/stalela --json
    """
    from ..api.keys import list_keys

    config = require_enrolled(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        rows = list_keys(conn)
    finally:
        conn.close()
    if as_json:
        emit_json({"data_dir": str(config.data_dir),
                   "keys": [{"name": r["name"], "api": r["api"], "created_at": r["created_at"], "revoked_at": r["revoked_at"],
                             "active": r["revoked_at"] is None} for r in rows]})
        return
    if not rows:
        click.echo("no API keys (create one: stalela agent keys create --data DATA POS-01)")
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        click.echo(f"{r['name']}\tapi {r['api']}\tcreated {r['created_at']}\t{state}")


@keys.command("revoke")
@data_option
@click.argument("name")
@domain_errors
def keys_revoke(data_dir, name):
    """Revoke a terminal's API key (takes effect at once).

    \b
    Example:
      stalela agent keys revoke --data /var/lib/stalela POS-01
    """
    from ..api.keys import revoke_key

    config = require_enrolled(data_dir)
    conn = connect(config.db_path)
    try:
        if not revoke_key(conn, name):
            raise click.ClickException(f"no active key named {name!r}")
    finally:
        conn.close()
    click.echo(f"revoked {name}")
