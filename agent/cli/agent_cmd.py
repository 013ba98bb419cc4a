"""`stalela agent …`: set up, enroll and run the agent; manage POS API keys."""
from __future__ import annotations

import asyncio
import socket

import click

from .. import logs
from ..cloud_client import CloudClient
from ..config import DRC_ZONES, write_default_config, write_secret
from fiscal.signing import generate_private_key, public_key_text, save_private_key
from ..identity import OutletIdentity
from ..store.db import connect, migrate
from .common import data_option, domain_errors, load, run_async


@click.group()
def agent() -> None:
    """Set up, enroll and run the local fiscal service."""


@agent.command()
@data_option
@click.option("--cloud", "cloud_url", default="http://127.0.0.1:8710", show_default=True, help="Cloud base URL.")
@click.option("--port", default=8720, show_default=True, help="Port of the POS API on 127.0.0.1.")
@click.option("--tz", "time_zone", type=click.Choice(DRC_ZONES), default=None,
              help="Outlet time zone (default: the one recorded for the outlet at enrollment).")
def init(data_dir, cloud_url, port, time_zone):
    """Create a data folder with a default config.toml and an empty journal.

    Example:

        stalela agent init --data /var/lib/stalela --cloud https://cloud.example.cd
    """
    if (data_dir / "config.toml").exists():
        raise click.ClickException(f"{data_dir} already has a config.toml; edit it instead")
    overrides = {"cloud__url": cloud_url, "agent__port": port}
    if time_zone:
        overrides["agent__time_zone"] = time_zone
    write_default_config(data_dir, **overrides)
    migrate(data_dir / "agent.db")
    click.echo(f"initialised {data_dir} (config: {data_dir / 'config.toml'})")


@agent.command()
@data_option
@click.option("--token", required=True, help="One-time enrollment token from the cloud operator.")
@click.option("--label", default=None, help="A name for this box (default: the host name).")
@domain_errors
def enroll(data_dir, token, label):
    """Enroll with the cloud: make the agent key pair, register it, fetch a first credential.

    The private key is written to keys/agent.key, readable by its owner only (0600).

    Example:

        stalela agent enroll --data /var/lib/stalela --token 7Q2X-…
    """
    config = load(data_dir)
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

    Example:

        stalela agent run --data /var/lib/stalela
    """
    from ..daemon import serve
    from ..service import NotEnrolled

    config = load(data_dir)
    migrate(config.db_path)
    logs.setup(log_level)
    try:
        asyncio.run(serve(config))
    except NotEnrolled as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if exc.errno == 98:
            raise click.ClickException(f"port {config.port} on {config.host} is already in use") from None
        raise


@agent.group()
def keys() -> None:
    """POS API keys (one per terminal; shown once, stored hashed)."""


@keys.command("create")
@data_option
@click.argument("name")
def keys_create(data_dir, name):
    """Create an API key for a POS terminal and print it once.

    Example:

        stalela agent keys create POS-01
    """
    from ..api.keys import create_key

    config = load(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        key = create_key(conn, name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        conn.close()
    click.echo(key)


@keys.command("list")
@data_option
def keys_list(data_dir):
    """List API keys (names and dates; the keys themselves are not stored).

    Example:

        stalela agent keys list
    """
    from ..api.keys import list_keys

    config = load(data_dir)
    migrate(config.db_path)
    conn = connect(config.db_path)
    try:
        rows = list_keys(conn)
    finally:
        conn.close()
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        click.echo(f"{r['name']}\tcreated {r['created_at']}\t{state}")


@keys.command("revoke")
@data_option
@click.argument("name")
def keys_revoke(data_dir, name):
    """Revoke a terminal's API key (takes effect at once).

    Example:

        stalela agent keys revoke POS-01
    """
    from ..api.keys import revoke_key

    config = load(data_dir)
    conn = connect(config.db_path)
    try:
        if not revoke_key(conn, name):
            raise click.ClickException(f"no active key named {name!r}")
    finally:
        conn.close()
    click.echo(f"revoked {name}")
