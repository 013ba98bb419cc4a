"""`stalela sim emcf ...`: run and drive the simulated DGI e-MCF (HTTP)."""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import click

from .faults import HELP, NAMES, parse_assignment

DEFAULT_PORT = 8720


def _state_option(fn):
    return click.option("--state", "state_path", required=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="The simulator's SQLite state file (created on first use).")(fn)


def _check_faults(values: tuple[str, ...]) -> None:
    for value in values:
        try:
            parse_assignment(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fault") from None


def _open_store(path: Path):
    import sqlite3

    from .store import Store
    try:
        return Store(path)
    except sqlite3.Error as exc:
        raise click.ClickException(f"{path} is not an e-MCF simulator state file: {exc}") from None


@click.group(name="emcf", context_settings={"help_option_names": ["-h", "--help"]})
def emcf() -> None:
    """The simulated DGI e-MCF: the HTTP normalization service the cloud forwards invoices to.

    \b
    Example:
      stalela sim emcf run --state /tmp/emcf.sqlite3 --port 8720
      stalela sim emcf token --state /tmp/emcf.sqlite3 --nif A1234567B --isf ISF-1
      stalela sim emcf fault --url http://127.0.0.1:8720 r429=5 retry_after=2
    """


@emcf.command()
@_state_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed on the ready line).")
@click.option("--max-pending", default=10, show_default=True, type=click.IntRange(1, 10_000),
              help="Unconfirmed requests allowed per point of sale.")
@click.option("--pending-ttl", default=120.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="Seconds before an unconfirmed request expires.")
@click.option("--rate", default=0.0, show_default=True, type=click.FloatRange(0, 100_000),
              help="Requests per second allowed per point of sale (0: no limit); beyond: 429.")
@click.option("--latency-ms", default=0, show_default=True, type=click.IntRange(0, 60_000),
              help="Added to every answer, as a DGI across the Internet would.")
@click.option("--fault", "faults", multiple=True, metavar="NAME=VALUE[:N]",
              help="Switch a fault on at start (repeatable); see `sim emcf faults`.")
def run(state_path: Path, host: str, port: int, max_pending: int, pending_ttl: float, rate: float,
        latency_ms: int, faults: tuple[str, ...]) -> None:
    """Serve the simulated e-MCF until SIGTERM or Ctrl-C; its state persists in --state.

    Prints `emcf: http://HOST:PORT` once listening.

    \b
    Example:
      stalela sim emcf run --state /tmp/emcf.sqlite3 --port 8720 --latency-ms 20 --rate 50
      stalela sim emcf run --state /tmp/emcf.sqlite3 --port 0 --pending-ttl 2 --fault down=503:3
    """
    from aiohttp import web

    from .app import Limits, make_server
    from .faults import Switchboard

    _check_faults(faults)
    switchboard = Switchboard()
    for each in faults:
        switchboard.apply(each)
    store = _open_store(state_path)
    limits = Limits(max_pending, pending_ttl, rate, latency_ms)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Held answers (confirm_delay_ms, slow_ms) must not hold the stop up.
        server = make_server(store, switchboard, limits, access_log=None)  # made inside the running loop
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            bound_host, bound_port = runner.addresses[0][:2]
            click.echo(f"emcf: http://{bound_host}:{bound_port}  state {state_path}")
            sys.stdout.flush()
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    finally:
        store.close()
    click.echo("stopped")


@emcf.command()
@_state_option
@click.option("--nif", required=True, help="The taxpayer's NIF.")
@click.option("--isf", required=True, help="The point of sale's ISF (invoicing system id).")
@click.option("--ttl", default=30 * 86400, show_default=True, type=click.IntRange(-86400, 10 * 365 * 86400),
              help="Seconds the token is valid (negative: already expired, for tests).")
def token(state_path: Path, nif: str, isf: str, ttl: int) -> None:
    """Issue the JWT of one point of sale (printed on stdout; treat it as a secret).

    \b
    Example:
      stalela sim emcf token --state /tmp/emcf.sqlite3 --nif A1234567B --isf ISF-1 > pos.token
    """
    from .tokens import issue

    store = _open_store(state_path)
    try:
        store.nim(nif, isf)  # the DGI assigns the point of sale its NIM when it registers it
        click.echo(issue(store.secret, nif, isf, ttl))
    finally:
        store.close()


@emcf.command()
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state_path: Path, as_json: bool) -> None:
    """Counts of requests by status, normalizations, rn normalized twice (should be 0).

    \b
    Example:
      stalela sim emcf status --state /tmp/emcf.sqlite3
    """
    if not state_path.exists():
        raise click.ClickException(f"no e-MCF simulator state at {state_path}")
    store = _open_store(state_path)
    try:
        stats = store.stats()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    click.echo(f"points of sale      {stats['points_of_sale']}")
    click.echo(f"normalized          {stats['normalized']}")
    click.echo(f"rn normalized twice {stats['rn_normalized_twice']}")
    click.echo("requests            " + (", ".join(f"{k} {v}" for k, v in sorted(stats["requests"].items())) or "none"))


@emcf.command("faults")
def list_faults() -> None:
    """List the e-MCF simulator's fault switches.

    \b
    Example:
      stalela sim emcf faults
    """
    for name in NAMES:
        click.echo(f"{name:16} {HELP[name]}")


@emcf.command("fault")
@click.option("--url", required=True, help="The running simulator's base URL.")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE[:N]... | clear")
def set_fault(url: str, assignments: tuple[str, ...]) -> None:
    """Switch faults of a running e-MCF simulator (through its /_sim/faults endpoint).

    \b
    Example:
      stalela sim emcf fault --url http://127.0.0.1:8720 r429=20 retry_after=1
      stalela sim emcf fault --url http://127.0.0.1:8720 down=503
      stalela sim emcf fault --url http://127.0.0.1:8720 clear
    """
    for each in assignments:
        if each != "clear":
            _check_faults((each,))
    data = ("\n".join(assignments) + "\n").encode()
    req = urllib.request.Request(url.rstrip("/") + "/_sim/faults", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            snapshot = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot reach the simulator at {url}: {exc}") from None
    click.echo(f"sent: {' '.join(assignments)}")
    click.echo(json.dumps(snapshot, sort_keys=True))
