"""`stalela up`: the quick start. Bundled cloud + enrolled agent on loopback, one command."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from .. import logs
from ..config import load_config, write_default_config, write_secret
from ..store.db import connect, migrate
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
    res = subprocess.run(args, capture_output=True, text=True)
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


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-data"), show_default=True, help="Where the demo keeps its files.")
@click.option("--cloud-port", default=8710, show_default=True)
@click.option("--port", default=8720, show_default=True, help="Agent POS API port.")
def up(data_dir: Path, cloud_port: int, port: int) -> None:
    """Quick start: run the bundled cloud, a simulated MCF and an enrolled agent on 127.0.0.1.

    On first use it creates a demo merchant and outlet in the cloud, enrolls the agent, fetches
    a delegated credential and makes a POS API key; it starts the simulated fiscal device (MCF) on a
    pseudo-terminal (DATA/sim/ttyMCF), provisions it for the outlet and seals in device mode (cloud,
    then delegated, as fallbacks); later runs reuse the same data. It prints the
    agent URL, the API key and a curl line that seals an invoice, then serves until Ctrl-C.

    Example:

        stalela up --data ./demo-data
    """
    data_dir = data_dir.resolve()
    cloud_dir, agent_dir = data_dir / "cloud", data_dir / "agent"
    cloud_url = f"http://127.0.0.1:{cloud_port}"
    data_dir.mkdir(parents=True, exist_ok=True)
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
            _run(_stalela("agent", "enroll", "--data", str(agent_dir), "--token", token.split()[0]))
        if not key_file.exists():
            migrate(agent_dir / "agent.db")
            conn = connect(agent_dir / "agent.db")
            try:
                from ..api.keys import create_key
                name = f"quickstart-{int(time.time())}"
                write_secret(key_file, create_key(conn, name))
            finally:
                conn.close()
        key = key_file.read_text().strip()
        config = load_config(agent_dir)
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
        click.echo(f"  API key (POS-01): {key}")
        click.echo("Seal an invoice:")
        click.echo("  " + curl_command(url, key))
        click.echo("Health:  curl -s " + url + "/v1/health")
        click.echo("Stop with Ctrl-C.\n", err=False)
        sys.stdout.flush()
        from ..daemon import serve
        logs.setup(os.environ.get("STALELA_LOG_LEVEL", "INFO"))
        asyncio.run(serve(config))
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
