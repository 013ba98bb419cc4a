"""`stalela device ...`: what a field technician needs to find, identify and check an MCF."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import click

from drivers.usb_fiscal_memory.client import MCFClient
from drivers.usb_fiscal_memory.commands import (
    TAXPAYER_FIELDS,
    TAXPAYER_LABELS,
    McfStatus,
    ServerLinkStatus,
)
from drivers.usb_fiscal_memory.errors import DeviceError, MCFLinkError
from drivers.usb_fiscal_memory.fields import InvalidRequest
from drivers.usb_fiscal_memory.framing import (
    Status,
    bcc,
    decode_command,
    decode_response,
    encode_command,
    encode_response,
    escape_param,
    unescape_param,
)
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport import open_transport
from drivers.usb_fiscal_memory.transport_usb import DEFAULT_VID_PIDS, discover

CLOCK_DRIFT_WARN = 300  # seconds between the MCF's clock and ours worth a warning
DEFAULT_ZONE = "Africa/Kinshasa"


# ------------------------------------------------------------------------------ plumbing
@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Domain errors become one-line CLI errors here, and only here."""
    try:
        yield
    except (MCFLinkError, DeviceError, InvalidRequest) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _client(port: str, timeout: float, spy: TextIO | None = None) -> Iterator[MCFClient]:
    with _clean_errors():
        transport = open_transport(port, spy=spy)
        try:
            yield MCFClient(Link(transport, timeout=timeout))
        finally:
            transport.close()


def port_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--port and --timeout, shared by every command that talks to a device."""
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0.5),
        default=0.5,
        show_default=True,
        help="Seconds to wait for each answer (the protocol's minimum is 0.5).",
    )(func)
    func = click.option(
        "--port",
        "-p",
        required=True,
        envvar="STALELA_MCF_PORT",
        metavar="URL",
        help="Device: /dev/ttyACM0, socket://host:port, rfc2217://host:port, usb:1209:0001[:SERIAL]."
        " Env: STALELA_MCF_PORT.",
    )(func)
    return func


def zone_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--data / --time-zone: the outlet's zone, whose local time the MCF's clock keeps."""
    func = click.option(
        "--time-zone", "time_zone", metavar="ZONE", default=None,
        help=f"The outlet's time zone, which the MCF's clock keeps [{DEFAULT_ZONE}; with --data: the agent's].",
    )(func)
    func = click.option(
        "--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="An enrolled agent's data folder: its outlet's time zone is used.",
    )(func)
    return func


def outlet_zone(data_dir: Path | None, time_zone: str | None) -> tzinfo:
    """The zone the MCF's local times are read in. Why: the MCF keeps the outlet's local time
    (DT fields carry no offset), so comparing them with this machine's clock (often UTC) in any
    other zone reports the zone difference as clock drift."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if data_dir is not None and time_zone is not None:
        raise click.UsageError("--data and --time-zone both name the outlet's zone: give one of them")
    if data_dir is not None:
        from agent.cli.common import require_enrolled
        from agent.identity import OutletIdentity

        config = require_enrolled(data_dir)
        time_zone = config.time_zone or OutletIdentity.load(config.enrollment_path).time_zone
    try:
        return ZoneInfo(time_zone or DEFAULT_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{time_zone!r} is not a time zone (e.g. Africa/Lubumbashi)",
                                 param_hint="--time-zone") from None


def outlet_now(tz: tzinfo) -> datetime:
    """Now as the MCF writes it: local time in the outlet's zone, without an offset."""
    return datetime.now(tz).replace(tzinfo=None)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _fmt_dt(raw: str) -> str:
    from drivers.usb_fiscal_memory.fields import parse_dt

    parsed = parse_dt(raw)
    return parsed.strftime("%d/%m/%Y %H:%M:%S") if parsed else (raw or "-")


def _flags_line(sta: Status | None) -> str:
    if sta is None:
        return "-"
    flags = sta.active
    return ", ".join(flags) if flags else "none (ready)"


# ------------------------------------------------------------------------------ the group
# Its own -h too: the group must not depend on how it was reached (the root sets it as well).
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def device() -> None:
    """Find, identify and check the DGI fiscal device (MCF)."""


LIBUSB_HINT = ("libusb-1.0 is not installed, so USB devices cannot be listed: install it "
               "(sudo apt-get install libusb-1.0-0 on Debian/Ubuntu) and scan again; serial ports are listed anyway")


def _libusb_missing() -> bool:
    import usb.backend.libusb1

    return usb.backend.libusb1.get_backend() is None


@device.command()
@click.option(
    "--vid-pid",
    "vid_pids",
    multiple=True,
    metavar="VID:PID",
    help="USB ids to look for (hex, repeatable). Default: 1209:0001.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (fields: docs/cli.md).")
def scan(vid_pids: tuple[str, ...], as_json: bool) -> None:
    """List candidate MCFs on USB and every serial port.

    USB needs libusb-1.0 (sudo apt-get install libusb-1.0-0); without it the scan says so and
    still lists the serial ports. The udev rule (systemd/60-stalela-mcf.rules) gives the MCF the
    stable name /dev/stalela-mcf.

    \b
    Example:
      stalela device scan
      stalela device scan --vid-pid 1209:0001 --vid-pid 0403:6001 --json
    """
    try:
        pairs = [tuple(int(x, 16) for x in v.split(":", 1)) for v in vid_pids] or list(
            DEFAULT_VID_PIDS
        )
    except ValueError as exc:
        raise click.BadParameter("use hexadecimal VID:PID, e.g. 1209:0001") from exc
    wanted = {(v, p) for v, p in pairs}
    usb_error = None
    try:
        candidates = discover(pairs)  # type: ignore[arg-type]
    except MCFLinkError as exc:
        usb_error = LIBUSB_HINT if _libusb_missing() else str(exc)
        candidates = []
    from serial.tools import list_ports

    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    if as_json:
        click.echo(json.dumps({
            "usb": {"available": usb_error is None, "error": usb_error,
                    "candidates": [{"vid": f"{c.vid:04x}", "pid": f"{c.pid:04x}", "bus": c.bus, "address": c.address,
                                    "manufacturer": c.manufacturer, "product": c.product, "serial": c.serial,
                                    "tty": c.tty, "port": c.url} for c in candidates]},
            "serial_ports": [{"device": p.device, "vid": f"{p.vid:04x}" if p.vid is not None else None,
                              "pid": f"{p.pid:04x}" if p.pid is not None else None, "description": p.description,
                              "mcf_id": (p.vid, p.pid) in wanted} for p in ports],
        }, indent=2, sort_keys=True))
        return
    click.echo("USB candidates:")
    if usb_error:
        click.echo(f"  (USB scan unavailable: {usb_error})")
    if not candidates:
        click.echo("  none")
    for c in candidates:
        click.echo(
            f"  {c.vid:04x}:{c.pid:04x} bus {c.bus} addr {c.address}  "
            f"{c.manufacturer or '?'} / {c.product or '?'} / serial {c.serial or '?'}"
            f"  -> --port {c.url}"
        )
    click.echo("Serial ports:")
    if not ports:
        click.echo("  none")
    for port in ports:
        ids = f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else "----:----"
        mark = "  <- MCF id" if (port.vid, port.pid) in wanted else ""
        click.echo(f"  {port.device}  {ids}  {port.description}{mark}")


def _print_info(client: MCFClient, as_json: bool, tz: tzinfo) -> None:
    mcf = client.status()
    sta = client.last_status
    taxpayer = client.taxpayer()
    link = client.server_link()
    now = outlet_now(tz)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "status": mcf.__dict__,
                    "flags": sta.active if sta else [],
                    "taxpayer": {TAXPAYER_LABELS[k]: v for k, v in taxpayer.items()},
                    "server_link": {**link.__dict__, "stale": link.is_stale(now)},
                },
                default=_json_default,
                indent=2,
            )
        )
        return
    _print_status(mcf, sta)
    click.echo("Taxpayer (2Bh):")
    for opt in TAXPAYER_FIELDS:
        click.echo(f"  {opt} {TAXPAYER_LABELS[opt]:<8} {taxpayer[opt]}")
    _print_link(link, now)


def _print_status(mcf: McfStatus, sta: Status | None) -> None:
    click.echo("MCF (C1h):")
    click.echo(f"  MID (DEF NIM)   {mcf.mid}")
    click.echo(f"  NIF             {mcf.nif}")
    click.echo(f"  clock           {_fmt_dt(mcf.dt)}")
    click.echo(f"  counters        total {mcf.tc}, sales {mcf.fvc}, credit notes {mcf.frc}")
    click.echo(
        f"  last invoice    {mcf.dft or '-'} {mcf.dfn or '-'} at {_fmt_dt(mcf.dfdt)}, "
        f"total {mcf.dmv if mcf.dmv is not None else '-'}, code {mcf.dfs or '-'}"
    )
    rates = "  ".join(f"{g}={r}" for g, r in mcf.rates.items())
    click.echo(f"  rates (%)       {rates}")
    click.echo(f"  status flags    {_flags_line(sta)}")


def _print_link(link: ServerLinkStatus, now: datetime) -> None:
    click.echo("DGI server link (C2h):")
    state = ServerLinkStatus.STATES.get(link.sta, "unknown")
    click.echo(f"  state           {link.sta} ({state})")
    click.echo(f"  sent / held     {link.ec} / {link.dc}")
    click.echo(f"  last connection {_fmt_dt(link.dt)}")
    if link.er:
        click.echo(f"  last error      {link.er}")
    if link.is_stale(now):
        click.secho(
            "  WARNING: the MCF has not reached the DGI server for more than 1 day",
            fg="yellow",
            err=False,
        )


@device.command()
@port_options
@zone_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(port: str, timeout: float, data_dir: Path | None, time_zone: str | None, as_json: bool) -> None:
    """Identify an MCF: status (C1h), taxpayer (2Bh I0-I4), DGI link (C2h).

    The DGI link's age is measured in the outlet's zone (--data or --time-zone).

    \b
    Example:
      stalela device info --port /dev/ttyACM0
      stalela device info --port socket://192.168.1.50:4001 --json
      stalela device info --port /dev/stalela-mcf --data /var/lib/stalela
    """
    tz = outlet_zone(data_dir, time_zone)
    with _client(port, timeout) as client, _clean_errors():
        _print_info(client, as_json, tz)


@device.command()
@port_options
def status(port: str, timeout: float) -> None:
    """Read the MCF status (C1h) and its status flags.

    \b
    Example:
      stalela device status --port /dev/ttyACM0
    """
    with _client(port, timeout) as client, _clean_errors():
        _print_status(client.status(), client.last_status)


@device.command()
@port_options
@zone_options
def spy(port: str, timeout: float, data_dir: Path | None, time_zone: str | None) -> None:
    """Show a hex dump of every byte exchanged while running `info`.

    \b
    Example:
      stalela device spy --port /dev/ttyACM0
    """
    tz = outlet_zone(data_dir, time_zone)
    with _client(port, timeout, spy=sys.stdout) as client, _clean_errors():
        _print_info(client, as_json=False, tz=tz)


def _framing_self_check() -> list[str]:
    """Problems found in our own framing code (empty when sound)."""
    problems = []
    body = bytes([0xFF] * 18) + bytes([0x12AB - 0xFF * 18])
    if bcc(body) != b"12:;":
        problems.append("BCC of 12ABh is not 31 32 3A 3B")
    frame = encode_command(0x20, 0xC1, b"")
    if frame != bytes.fromhex("0124 20c1 0530 3130 3a03") or decode_command(frame).cmd != 0xC1:
        problems.append("C1h frame encoding")
    response = encode_response(0x21, 0x38, b"R:x", Status(invoice_open=True).to_bytes())
    decoded = decode_response(response)
    if decoded.data != b"R:x" or not Status.from_bytes(decoded.status).invoice_open:
        problems.append("response decoding")
    sample = "Lait, 1L <promo> & ^lt;\r\n"
    if unescape_param(escape_param(sample)) != sample:
        problems.append("escaping round trip")
    return problems


@device.command()
@port_options
@zone_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (fields: docs/cli.md).")
def selftest(port: str, timeout: float, data_dir: Path | None, time_zone: str | None, as_json: bool) -> None:
    """Check framing, a C1h round trip, the clock and the fiscal memory.

    The MCF's clock keeps the outlet's local time: its drift is measured against now in the
    outlet's zone (the agent's with --data, else --time-zone, default Africa/Kinshasa).

    Exit codes: 0 every check passed (warnings allowed); 1 a check failed or the device could
    not be reached.

    \b
    Example:
      stalela device selftest --port /dev/stalela-mcf
      stalela device selftest --port /dev/ttyACM0 --json
      stalela device selftest --port /dev/stalela-mcf --data /var/lib/stalela
      stalela device selftest --port /dev/ttyACM0 --time-zone Africa/Lubumbashi
    """
    tz = outlet_zone(data_dir, time_zone)
    checks: list[dict[str, str]] = []

    def report(level: str, text: str) -> None:
        checks.append({"level": level, "check": text})
        if not as_json:
            colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}[level]
            click.echo(click.style(f"{level:<5}", fg=colour) + f"{text}")

    problems = _framing_self_check()
    report("FAIL" if problems else "PASS", "framing self-check" + (f": {problems}" if problems else ""))
    with _client(port, timeout) as client, _clean_errors():
        started = time.monotonic()
        mcf = client.status()
        elapsed = (time.monotonic() - started) * 1000
        sta = client.last_status or Status()
        report("PASS", f"C1h round trip ({elapsed:.0f} ms incl. link sync): MID {mcf.mid}, NIF {mcf.nif}")
        if sta.clock_not_set:
            report("FAIL", "MCF clock not set (status bit 0.2)")
        else:
            clock = mcf.clock
            if clock is None:
                report("WARN", f"MCF clock unreadable: {mcf.dt!r}")
            else:
                drift = abs((clock - outlet_now(tz)).total_seconds())
                report("WARN" if drift > CLOCK_DRIFT_WARN else "PASS",
                       f"MCF clock {_fmt_dt(mcf.dt)} (drift {drift:.0f} s against {tz})")
        for flag, level, text in (
            ("memory_full", "FAIL", "fiscal memory full"),
            ("memory_write_error", "FAIL", "fiscal memory write error"),
            ("invalid_record", "FAIL", "invalid record in fiscal memory"),
            ("memory_low", "WARN", "fewer than 50 records left in fiscal memory"),
            ("memory_reset_detected", "WARN", "memory reset detected"),
            ("daily_report_required", "WARN", "daily report must be made"),
            ("invoice_open", "WARN", "an invoice is open"),
        ):
            if getattr(sta, flag):
                report(level, text)
        if not (sta.memory_full or sta.memory_write_error or sta.invalid_record or sta.memory_low):
            report("PASS", "fiscal memory")
    failures = [c["check"] for c in checks if c["level"] == "FAIL"]
    if as_json:
        click.echo(json.dumps({"ok": not failures, "port": port, "mid": mcf.mid, "nif": mcf.nif,
                               "checks": checks}, indent=2, sort_keys=True))
        if failures:
            raise SystemExit(1)
        return
    if failures:
        raise click.ClickException(f"self-test failed: {'; '.join(failures)}")
    click.echo("self-test passed")


# ------------------------------------------------------------------------------ provision
def _link_error_text(port: str, exc: Exception) -> str:
    """One line a technician can act on, for each way opening the device fails."""
    from drivers.usb_fiscal_memory.errors import DeviceNotFound, PermissionDenied, PortBusy

    if isinstance(exc, PermissionDenied):
        return (f"no permission to open {port}: install the udev rule (sudo cp systemd/60-stalela-mcf.rules "
                "/etc/udev/rules.d/ && sudo udevadm control --reload && sudo udevadm trigger) and add the "
                "service user to group dialout (sudo usermod -aG dialout $USER; log in again)")
    if isinstance(exc, PortBusy):
        return (f"{port} is in use by another process (is the agent running with this device? "
                "stop it first: sudo systemctl stop stalela-agent)")
    if isinstance(exc, DeviceNotFound):
        return f"no MCF at {port}: check the cable and the port name (`stalela device scan` lists candidates)"
    return f"the MCF at {port} does not answer properly: {type(exc).__name__}: {exc}"


def absolute_port(port: str) -> str:
    """The port as the agent must be told it: a device path made absolute (the agent runs from
    another directory than the technician's shell), sim:// paths too; URLs as they are.

    Symlinks are kept (os.path.abspath, not resolve): /dev/stalela-mcf must stay the udev link,
    not the ttyACM number it points to today.
    """
    import os

    if port.startswith("sim://"):
        path, mark, query = port[len("sim://"):].partition("?")
        return "sim://" + os.path.abspath(path) + mark + query
    if "://" in port or port.startswith("usb:"):
        return port
    return os.path.abspath(port)


def _cloud_post(url: str, token: str, path: str, body: dict, timeout: float = 10.0) -> tuple[int, Any]:
    from agent.cloud_client import CloudError, post_json  # the agent's one client to the cloud

    try:
        return post_json(url, token, path, body, timeout)
    except CloudError as exc:
        raise click.ClickException(exc.detail) from None


@device.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The agent's data folder (enrolled: enrollment.json, config.toml).")
@click.option("--token", "provisioning_token", required=True, envvar="STALELA_PROVISIONING_TOKEN",
              help="The provisioning token the operator issued for this outlet "
                   "(`stalela cloud devices token --outlet ID`); or set STALELA_PROVISIONING_TOKEN.")
@port_options
@click.option("--write-config", is_flag=True,
              help="Also set [device] url in the agent's config.toml to this port (a path made absolute).")
def provision(data_dir: Path, provisioning_token: str, port: str, timeout: float, write_config: bool) -> None:
    """Bind this MCF to the agent's outlet in the cloud (POST /v1/devices).

    Reads the device's identity (C1h: MID, NIF; 2Bh: taxpayer I0-I4; C2h: DGI link) and the
    USB strings, refuses a device whose NIF is not the outlet merchant's, then binds the MID to
    this outlet with a provisioning token from the operator (an agent cannot bind devices with
    its own token). Safe to run again (it refreshes the record).
    With --write-config it also sets `[device] url` in the agent's config.toml (restart the
    agent afterwards); without, set it yourself to the same port.

    \b
    Example:
      stalela device provision --data /var/lib/stalela --port /dev/stalela-mcf --token stlp_... --write-config
      stalela device provision --data ./demo-data/agent --port usb:1209:0001 --token stlp_...
    \b
    Errors name their fix: no permission -> systemd/60-stalela-mcf.rules and group dialout;
    port busy -> stop the agent that holds it; no device -> `stalela device scan`.
    """
    from agent.config import ConfigError, load_config
    from agent.identity import OutletIdentity

    try:
        config = load_config(data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not config.enrollment_path.exists():
        raise click.ClickException(f"{data_dir} is not enrolled: run `stalela agent enroll` first")
    identity = OutletIdentity.load(config.enrollment_path)

    transport = None
    try:
        transport = open_transport(port)
        transport.open()
        client = MCFClient(Link(transport, timeout=timeout))
        mcf = client.status()
        taxpayer = client.taxpayer()
        try:
            link: ServerLinkStatus | None = client.server_link()
        except DeviceError:
            link = None
    except MCFLinkError as exc:
        raise click.ClickException(_link_error_text(port, exc)) from None
    except DeviceError as exc:
        raise click.ClickException(f"the MCF refused to identify itself: {exc}") from None
    finally:
        if transport is not None:
            transport.close()
    click.echo(f"MCF {mcf.mid}  NIF {mcf.nif}  taxpayer {taxpayer.get('I0') or '-'}")
    if mcf.nif != identity.merchant_nif:
        raise click.ClickException(
            f"refused: this MCF belongs to taxpayer NIF {mcf.nif}, but outlet {identity.outlet_id} is "
            f"merchant {identity.merchant_nif}'s ({identity.merchant_name}). Only the merchant's own "
            "MCF can seal its invoices; fetch the right device.")
    from agent.device.firmware import firmware_strings

    firmware = firmware_strings(port)
    if link is not None and link.dt:
        firmware["dgi_last_connection"] = link.dt
    status, body = _cloud_post(config.cloud_url, provisioning_token.strip(), "/v1/devices",
                               {"mid": mcf.mid, "nif": mcf.nif, "status": "active", "firmware": firmware})
    if status in (200, 201):
        verb = "provisioned" if status == 201 else "already provisioned; record refreshed"
        click.echo(f"device {mcf.mid} {verb} for outlet {identity.outlet_id} in the cloud ({config.cloud_url}).")
        url = absolute_port(port)
        if write_config and config.device_url != url:
            from agent.config import set_value

            try:
                set_value(config.data_dir, "device", "url", url)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(f"[device] url = \"{url}\" written to {config.config_path}; restart the agent "
                       "(sudo systemctl restart stalela-agent).")
        elif config.device_url != url:
            click.echo(f"Next: set [device] url = \"{url}\" in {config.config_path} and restart the agent "
                       "(or run this again with --write-config).")
        return
    detail = body.get("detail") if isinstance(body, dict) else None
    raise click.ClickException(f"the cloud refused the device ({status}): {detail or body}")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(device())
