"""`stalela up`: the quick start. Bundled cloud + enrolled agent on loopback, one command."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from .. import logs
from cloud_stub.config import DEFAULT_PORT as DEFAULT_CLOUD_PORT

from ..config import Settings, write_default_config, write_secret
from ..store.db import connect, migrate
from .common import load
from fiscal.examples import SAMPLE


def _stalela(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise click.ClickException(f"the cloud exited early (code {proc.returncode}); see its log above")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise click.ClickException(f"{url} did not answer within {timeout:.0f} s")


def _run(args: list[str]) -> str:
    return _run_with_stdin(args, None)


def _run_with_stdin(args: list[str], stdin: str | None) -> str:
    res = subprocess.run(args, capture_output=True, text=True, input=stdin)
    if res.returncode != 0:
        raise click.ClickException(f"{' '.join(args[2:])} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip()


DEMO_NIF = "A1234567B"
DEMO_TAXPAYER = {"I0": "SUPERMARCHE CENTRAL", "I1": "BOULEVARD DU 30 JUIN 12", "I2": "KINSHASA GOMBE",
                 "I3": "0990000000", "I4": "contact@supermarche-central.cd"}


def _start_simulator(sim_dir: Path, log) -> tuple[subprocess.Popen, Path]:
    """The simulated MCF on a real pseudo-terminal (closest to a USB device), provisioned on
    first use with the demo merchant's NIF and taxpayer info; the agent opens DATA/sim/ttyMCF."""
    from simulator.state import FiscalState, FiscalStore

    sim_dir.mkdir(parents=True, exist_ok=True)
    state, link = sim_dir / "state.json", sim_dir / "ttyMCF"
    store = FiscalStore(state)
    if not store.exists():
        store.create(FiscalState.new(mid="SIM0000001-1", nif=DEMO_NIF, taxpayer=DEMO_TAXPAYER))
    proc = subprocess.Popen(_stalela("sim", "run", "--state", str(state), "--pty", "--link", str(link)),
                            stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 15
    while not link.is_symlink():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise click.ClickException(f"the simulated MCF did not start; see {sim_dir.parent / 'sim.log'}")
        time.sleep(0.05)
    return proc, link


def curl_command(url: str, key: str) -> str:
    body = json.dumps(SAMPLE, separators=(",", ":"))
    # request_id is made unique by the shell each time the line is pasted.
    body = '{"request_id":"DEMO-' + "'\"$(date +%s%N)\"'" + '",' + body[1:]
    # The MCF refuses an invoice number equal to its previous one: a fresh one per paste too.
    body = body.replace('"invoice_number":"DEMO/1"', '"invoice_number":"DEMO/' + "'\"$(date +%s%N)\"'" + '"')
    return (f"curl -s -X POST {url}/v1/invoices -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{body}'")


DEMO_KEY_NAME = "POS-01"


def _take_lock(data_dir: Path):
    """Hold DATA/up.lock for this run's lifetime, or refuse: another `up` serves this folder.

    Why: a second `up` on the same folder used to start a second simulator (which replaced the
    first one's ttyMCF link), print the banner and die with a traceback. flock is released by the
    kernel when the process ends, so a crash never leaves a stale lock behind.
    """
    lock_path = data_dir / "up.lock"
    if not data_dir.exists():
        data_dir.mkdir(parents=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise click.ClickException(
            f"a demo is already running from {data_dir} (pid {holder}): use it, or stop it (Ctrl-C in its "
            f"terminal, or kill {holder}) before starting another; a second demo needs its own --data and "
            "ports") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


def _check_ports(ports: dict[str, int]) -> None:
    """Refuse busy ports before anything starts (each one named with who usually holds it)."""
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise click.ClickException(
                    f"port {port} ({what}) on 127.0.0.1 is already in use (another `stalela up`, cloud or agent?): "
                    f"stop it, or choose other ports with --cloud-port/--port") from None


def _demo_key(agent_dir: Path, key_file: Path) -> tuple[str, str]:
    """The demo's POS API key and the name `stalela agent keys list` shows for it."""
    from ..api.keys import create_key, lookup
    from ..store.keys import key_names

    migrate(agent_dir / "agent.db")
    conn = connect(agent_dir / "agent.db")
    try:
        if key_file.exists():
            key = key_file.read_text().strip()
            return key, lookup(conn, key) or "revoked"
        taken = key_names(conn)
        name = DEMO_KEY_NAME
        n = 1
        while name in taken:  # a key file lost after its key was made: a new name, never a reuse
            n += 1
            name = f"{DEMO_KEY_NAME}-{n}"
        key = create_key(conn, name)
        write_secret(key_file, key)
        return key, name
    finally:
        conn.close()


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-data"), show_default=True, help="Where the demo keeps its files.")
@click.option("--cloud-port", default=DEFAULT_CLOUD_PORT, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the bundled cloud.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help=f"Agent POS API port [default: {Settings.model_construct().agent.port}; later runs: the one "
                   "in DATA/agent/config.toml].")
def up(data_dir: Path, cloud_port: int, port: int | None) -> None:
    """Quick start: run the bundled cloud, a simulated MCF and an enrolled agent on 127.0.0.1.

    On first use it creates a demo merchant and outlet in the cloud, enrolls the agent, fetches
    a delegated credential and makes a POS API key (named POS-01); it starts the simulated fiscal
    device (MCF) on a pseudo-terminal (DATA/sim/ttyMCF), provisions it for the outlet and seals in
    device mode (cloud, then delegated, as fallbacks); later runs reuse the same data. It prints
    the agent URL, the API key and a curl line that seals an invoice, then serves until Ctrl-C.
    A second `up` while one runs on the same folder or ports is refused and changes nothing.

    \b
    Example:
      stalela up --data ./demo-data
      stalela up --data /tmp/demo2 --cloud-port 8711 --port 8721
    """
    data_dir = data_dir.resolve()
    cloud_dir, agent_dir = data_dir / "cloud", data_dir / "agent"
    cloud_url = f"http://127.0.0.1:{cloud_port}"
    existing = load(agent_dir) if (agent_dir / "config.toml").exists() else None
    if port is None:
        port = existing.port if existing else Settings.model_construct().agent.port
    ports = {"cloud": cloud_port, "agent": existing.port if existing else port}
    # Nothing is created or changed before both checks pass. The folder's lock comes first when
    # the folder exists (it names the running demo); a new folder is made only once the ports are free.
    if data_dir.exists():
        lock = _take_lock(data_dir)
        _check_ports(ports)
    else:
        _check_ports(ports)
        lock = _take_lock(data_dir)
    cloud_log = open(data_dir / "cloud.log", "ab")
    cloud = subprocess.Popen(_stalela("cloud", "serve", "--data", str(cloud_dir), "--port", str(cloud_port)),
                             stdout=cloud_log, stderr=cloud_log, start_new_session=True)
    sim_log = open(data_dir / "sim.log", "ab")
    sim, sim_link = None, None
    try:
        sim, sim_link = _start_simulator(data_dir / "sim", sim_log)
        _wait_http(cloud_url + "/v1/health", 30, cloud)
        key_file = data_dir / "quickstart-api-key"
        if not (agent_dir / "enrollment.json").exists():
            _run(_stalela("cloud", "merchant", "add", "--data", str(cloud_dir), "--nif", "A1234567B",
                          "--name", "SUPERMARCHE CENTRAL"))
            _run(_stalela("cloud", "outlet", "add", "--data", str(cloud_dir), "--merchant", "A1234567B",
                          "--id", "KIN-001", "--name", "SUPERMARCHE CENTRAL GOMBE"))
            token = _run(_stalela("cloud", "token", "create", "--data", str(cloud_dir), "--outlet", "KIN-001"))
            if not (agent_dir / "config.toml").exists():
                # Device mode by default (the simulated MCF); cloud, then delegated, as fallbacks.
                write_default_config(agent_dir, cloud__url=cloud_url, agent__port=port, credential__check_interval=5,
                                     device__url=str(sim_link), signer__policy=["device", "cloud", "delegated"])
            _run_with_stdin(_stalela("agent", "enroll", "--data", str(agent_dir), "--token", "-"), token.split()[0])
        key, key_name = _demo_key(agent_dir, key_file)
        config = load(agent_dir)
        if config.device_url:
            # Bind the MCF to the outlet in the cloud (refreshes the record on later runs). Only the
            # operator binds devices: the quick start is the operator too and issues the token.
            bind_token = _run(_stalela("cloud", "devices", "token", "--data", str(cloud_dir), "--outlet", "KIN-001"))
            _run(_stalela("device", "provision", "--data", str(agent_dir), "--port", config.device_url,
                          "--token", bind_token.split()[0]))
        url = f"http://{config.host}:{config.port}"
        click.echo("")
        click.echo("Stalela Edge is up.")
        click.echo(f"  cloud  {cloud_url}   (log: {data_dir / 'cloud.log'})")
        click.echo(f"  agent  {url}   (data: {agent_dir})")
        if config.device_url:
            click.echo(f"  device simulated MCF on {config.device_url}   (log: {data_dir / 'sim.log'})")
        click.echo(f"  API key ({key_name}): {key}")
        click.echo("Seal an invoice:")
        click.echo("  " + curl_command(url, key))
        click.echo("Health:  curl -s " + url + "/v1/health")
        click.echo("Stop with Ctrl-C.\n", err=False)
        sys.stdout.flush()
        from ..daemon import serve
        logs.setup(os.environ.get("STALELA_LOG_LEVEL", "INFO"))
        try:
            asyncio.run(serve(config))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise click.ClickException(f"port {config.port} on {config.host} was taken meanwhile; "
                                       "the demo stops") from None
    finally:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
        sim_log.close()
        cloud.terminate()
        try:
            cloud.wait(10)
        except subprocess.TimeoutExpired:
            cloud.kill()
        cloud_log.close()
        os.close(lock)
