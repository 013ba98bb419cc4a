"""``stalela sim``: run and inspect the simulated MCF from a shell."""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import click

from .device import DeviceOptions, FiscalDevice
from .faults import HELP, NAMES, FaultSwitchboard, parse_assignment
from .state import (
    DEFAULT_TIME_ZONE,
    INVOICE_TYPES,
    FiscalState,
    FiscalStore,
    StateError,
    atomic_write,
    device_zone,
)

CONTROL_POLL = 0.2  # how often `sim run` looks at its control file


def _state_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state",
        "state_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Fiscal memory file of the simulated MCF (created on first `run`).",
    )(func)


def _time_zone_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--time-zone", "time_zone", default=None, metavar="ZONE", help=help_text)


def _check_zone(time_zone: str | None) -> None:
    if time_zone is not None:
        try:
            device_zone(time_zone)
        except StateError as exc:
            raise click.BadParameter(str(exc), param_hint="--time-zone") from None


def _fault_values(values: tuple[str, ...]) -> list[tuple[str, int | bool | str, int | None]]:
    parsed = []
    for value in values:
        try:
            parsed.append(parse_assignment(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fault") from None
    return parsed


def _open_device(state_path: Path) -> FiscalDevice:
    """The device as its files say, for the offline commands (no link, no engine)."""
    store = FiscalStore(state_path)
    if not store.exists():
        raise click.ClickException(f"no simulated MCF at {state_path} (start one with `sim run`)")
    try:
        return FiscalDevice(store, DeviceOptions(), FaultSwitchboard())
    except StateError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="sim", context_settings={"help_option_names": ["-h", "--help"]})
def sim() -> None:
    """The simulated MCF (DGI fiscal device): a software device any SFE can talk to.

    \b
    Example:
      stalela sim run --state /tmp/mcf.json --pty --link /tmp/ttyMCF
      stalela sim status --state /tmp/mcf.json
    """


@sim.command()
@_state_option
@click.option("--pty", "use_pty", is_flag=True, help="Serve on a pseudo-terminal (the default).")
@click.option("--link", type=click.Path(path_type=Path),
              help="Symlink to the pty's slave at this path (implies --pty).")
@click.option("--tcp", metavar="HOST:PORT", help="Serve on TCP too, for pyserial socket:// URLs.")
@click.option("--mid", default=None, help="Machine id NID-ACNT for a new device [SIM0000001-1].")
@click.option("--nif", default=None, help="Taxpayer NIF for a new device [A1234567B].")
@click.option("--max-records", type=click.IntRange(min=1), default=None,
              help="Memory capacity of a new device, in invoices [100000].")
@_time_zone_option(f"Zone whose local time the device's clock keeps, e.g. Africa/Lubumbashi "
                   f"[{DEFAULT_TIME_ZONE} for a new device; an existing one keeps its own].")
@click.option("--wire-timing", is_flag=True, help="Emulate 115200 baud 8N1 byte times.")
@click.option("--answer-style", type=click.Choice(["table", "example"]), default="table",
              help="38h success as in the document's table (FN,SIG) or its example (SIG,FN).")
@click.option("--c0h-fields", type=click.Choice(["8", "7"]), default="8",
              help="Fields in the C0h answer: 8 (table) or 7 (example 4).")
@click.option("--fault", "faults", multiple=True, metavar="NAME=VALUE[:N]",
              help="Switch a fault on at start (repeatable); see `sim faults`.")
@click.option("--control", type=click.Path(dir_okay=False, path_type=Path),
              help="Watch this file for NAME=VALUE[:N] lines (or `clear`) and apply them live.")
def run(
    state_path: Path,
    use_pty: bool,
    link: Path | None,
    tcp: str | None,
    mid: str | None,
    nif: str | None,
    max_records: int | None,
    time_zone: str | None,
    wire_timing: bool,
    answer_style: str,
    c0h_fields: str,
    faults: tuple[str, ...],
    control: Path | None,
) -> None:
    """Run a simulated MCF on a pty and/or TCP until SIGTERM or Ctrl-C.

    The fiscal memory is created on first use and continues where it stopped afterwards.

    \b
    Example:
      stalela sim run --state /tmp/mcf.json --pty --link /tmp/ttyMCF
      stalela sim run --state /tmp/mcf.json --tcp 127.0.0.1:4001 --fault syn_ms=300:1
      # then: serial.serial_for_url("socket://127.0.0.1:4001")
      stalela sim run --state /tmp/mcf-lubumbashi.json --time-zone Africa/Lubumbashi
      stalela sim run --state /tmp/mcf.json --control /tmp/mcf.ctl --fault hold_answer=38
    """
    from .engine import MCFEngine
    from .pty_link import PtyLink
    from .tcp_link import TcpLink

    host, port = _parse_hostport(tcp) if tcp else ("", 0)
    switchboard = FaultSwitchboard()
    for name, value, clear_after in _fault_values(faults):
        switchboard.set(name, value, clear_after)
    _check_identity(state_path, mid, nif)
    _check_zone(time_zone)
    _move_to_zone(state_path, time_zone)
    try:
        engine = MCFEngine(
            state_path,
            options=DeviceOptions(
                answer_style="example" if answer_style == "example" else "table",
                c0h_fields=7 if c0h_fields == "7" else 8,
                wire_timing=wire_timing,
            ),
            faults=switchboard,
            provision=_provision(state_path, mid, nif, max_records, time_zone),
        )
    except StateError as exc:
        raise click.ClickException(str(exc)) from None

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    links: list[PtyLink | TcpLink] = []
    try:
        state = engine.state
        click.echo(f"MCF {state.mid} NIF {state.nif}, fiscal memory {state_path}, "
                   f"clock {engine.device.now():%Y-%m-%d %H:%M:%S} ({state.time_zone})")
        if use_pty or link or not tcp:
            pty_link = PtyLink(engine, link)
            links.append(pty_link)
            try:
                slave = pty_link.start()
            except OSError as exc:
                raise click.ClickException(f"cannot create the pty link: {exc}") from None
            click.echo(f"pty: {pty_link.slave_path}" + (f" (link {slave})" if link else ""))
        if tcp:
            tcp_link = TcpLink(engine, host, port)
            links.append(tcp_link)
            try:
                click.echo(f"tcp: {tcp_link.start()}")
            except OSError as exc:
                raise click.ClickException(f"cannot listen on {tcp}: {exc}") from None
        sys.stdout.flush()
        watcher = _ControlFile(control, switchboard) if control else None
        reported = 0
        while not stop.wait(CONTROL_POLL):
            if watcher is not None:
                watcher.check()
            reported = _report_holds(switchboard, reported)
    finally:
        for each in links:
            each.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo("stopped")


def _report_holds(switchboard: FaultSwitchboard, reported: int) -> int:
    """One stdout line per hold that started, so whoever drives the simulator can act on it."""
    held = switchboard.held_log
    for each in held[reported:]:
        what = "ran, its answer is held" if each.ran else "held before it runs"
        click.echo(f"hold: {each.cmd:02X}h (SEQ {each.seq:02X}h) received, {what}; "
                   "release with `sim fault --control FILE hold=off`")
    if len(held) > reported:
        sys.stdout.flush()
    return len(held)


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint="--tcp")
    return host, int(port)


def _provision(
    path: Path, mid: str | None, nif: str | None, max_records: int | None, time_zone: str | None
) -> FiscalState | None:
    if FiscalStore(path).exists():
        return None
    kwargs: dict[str, Any] = {}
    if time_zone:
        kwargs["time_zone"] = time_zone
    if mid:
        kwargs["mid"] = mid
    if nif:
        kwargs["nif"] = nif
    if max_records:
        kwargs["max_records"] = max_records
    try:
        return FiscalState.new(**kwargs)
    except StateError as exc:
        raise click.ClickException(str(exc)) from None


def _check_identity(path: Path, mid: str | None, nif: str | None) -> None:
    """A device's identity never changes: refuse --mid/--nif that contradict its memory."""
    store = FiscalStore(path)
    if not store.exists():
        return
    try:
        state = store.load()
    except StateError as exc:
        raise click.ClickException(str(exc)) from None
    for label, wanted, actual in (("MID", mid, state.mid), ("NIF", nif, state.nif)):
        if wanted and wanted != actual:
            raise click.ClickException(f"{path} is device {label} {actual}, not {wanted}")


def _move_to_zone(path: Path, time_zone: str | None) -> None:
    """An existing device told to keep another zone's time: its clock follows (same offset)."""
    store = FiscalStore(path)
    if time_zone is None or not store.exists():
        return
    try:
        state = store.load()
        if state.time_zone != time_zone:
            store.save(dataclasses.replace(state, time_zone=time_zone))
    except StateError as exc:
        raise click.ClickException(str(exc)) from None


class _ControlFile:
    """Applies a control file's fault lines each time the file changes."""

    def __init__(self, path: Path, switchboard: FaultSwitchboard) -> None:
        self.path = path
        self.switchboard = switchboard
        # What is there before the simulator starts is an earlier run's: not applied.
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def check(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return
        self._seen = stamp
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line == "clear":
                self.switchboard.clear()
                continue
            try:
                self.switchboard.apply(line)
            except ValueError as exc:
                click.echo(f"control file: {exc}", err=True)


@sim.command()
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (fields: docs/cli.md).")
def status(state_path: Path, as_json: bool) -> None:
    """Show a simulated MCF's identity, counters, last invoice and status bits.

    Reads the fiscal memory file; an open invoice of a running simulator lives in its RAM
    and is not shown.

    \b
    Example:
      stalela sim status --state /tmp/mcf.json
      stalela sim status --state /tmp/mcf.json --json
    """
    device = _open_device(state_path)
    s = device.state
    flags = device.status().active
    last = s.last_invoice
    if as_json:
        click.echo(json.dumps({
            "mid": s.mid, "nif": s.nif, "clock": device.now().isoformat(timespec="seconds"),
            "clock_set": device.clock_is_set(),
            "counters": {"tc": s.tc, "fvc": s.fvc, "frc": s.frc, "per_type": {t: s.counters[t] for t in INVOICE_TYPES}},
            "last_invoice": None if last is None else {"type": last.ft, "number": last.fn, "total": str(last.mv),
                                                       "datetime": last.dt, "sig": last.sig},
            "memory": {"records": s.journal_count, "max_records": s.max_records, "left": device.records_left()},
            "dgi": {"sent": s.dgi_sent, "last_connection": s.dgi_last_connection or None},
            "rates": {g: str(v) for g, v in s.rates.items()},
            "status_bits": list(flags),
        }, indent=2, sort_keys=True))
        return
    click.echo(f"MID {s.mid}   NIF {s.nif}")
    unset = "" if device.clock_is_set() else " (not set)"
    click.echo(f"clock       {device.now():%Y-%m-%d %H:%M:%S} ({s.time_zone}){unset}")
    per_type = "  ".join(f"{t} {s.counters[t]}" for t in INVOICE_TYPES)
    click.echo(f"counters    TC {s.tc}  FVC {s.fvc}  FRC {s.frc}  ({per_type})")
    if last is None:
        click.echo("last        none")
    else:
        click.echo(f"last        {last.ft} {last.fn}  {last.mv}  {last.dt}  SIG {last.sig}")
    left = device.records_left()
    click.echo(f"memory      {s.journal_count}/{s.max_records} records, {left} left")
    last_link = s.dgi_last_connection or "never"
    click.echo(f"DGI link    sent {s.dgi_sent}/{s.tc}, last connection {last_link}")
    click.echo("rates       " + " ".join(f"{g}={v}" for g, v in s.rates.items()))
    click.echo("status bits " + (", ".join(f.replace("_", " ") for f in flags) or "none"))


@sim.command("set-clock")
@_state_option
@click.option("--at", "when", metavar="'YYYY-MM-DD HH:MM:SS'", help="Device time to set [now].")
@click.option("--unset", is_flag=True, help="Forget the time: the clock-not-set status bit.")
@_time_zone_option("Keep this zone's local time from now on [the device's own].")
def set_clock(state_path: Path, when: str | None, unset: bool, time_zone: str | None) -> None:
    """Set (or unset) the clock of a stopped simulated MCF.

    The time is local time in the device's zone (see `sim status`); without --at the clock
    is set to the zone's current time.

    \b
    Example:
      stalela sim set-clock --state /tmp/mcf.json --at '2026-03-01 12:25:47'
      stalela sim set-clock --state /tmp/mcf.json --time-zone Africa/Lubumbashi
      stalela sim set-clock --state /tmp/mcf.json --unset
    """
    _check_zone(time_zone)
    device = _open_device(state_path)
    if unset:
        zone = time_zone or device.state.time_zone
        device.state = dataclasses.replace(device.state, clock_offset=None, time_zone=zone)
        device.store.save(device.state)
        click.echo("clock not set")
        return
    try:
        moment = datetime.strptime(when, "%Y-%m-%d %H:%M:%S") if when else None
    except ValueError:
        message = f"{when!r} is not YYYY-MM-DD HH:MM:SS"
        raise click.BadParameter(message, param_hint="--at") from None
    device.set_clock(moment, time_zone=time_zone)
    click.echo(f"clock set to {device.now():%Y-%m-%d %H:%M:%S} ({device.state.time_zone})")


@sim.command("daily-report")
@_state_option
def daily_report(state_path: Path) -> None:
    """Record that the daily report was made (clears the daily-report status bit).

    \b
    Example:
      stalela sim daily-report --state /tmp/mcf.json
    """
    device = _open_device(state_path)
    device.daily_report_done()
    click.echo(f"daily report recorded after {device.state.tc} transactions")


@sim.command("faults")
def list_faults() -> None:
    """List the fault switchboard's switches.

    \b
    Example:
      stalela sim faults
      stalela sim run --state /tmp/mcf.json --fault nak=2 --fault delay_ms=300:5
    """
    for name in NAMES:
        click.echo(f"{name:24} {HELP[name]}")


@sim.command("fault")
@click.option("--control", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The control file a `sim run --control` watches.")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE[:N]... | clear")
def set_fault(control: Path, assignments: tuple[str, ...]) -> None:
    """Switch faults of a running simulator through its control file.

    \b
    Example:
      stalela sim fault --control /tmp/mcf.ctl nak=3 syn_ms=500:1
      stalela sim fault --control /tmp/mcf.ctl hold=31#2
      stalela sim fault --control /tmp/mcf.ctl hold=off
      stalela sim fault --control /tmp/mcf.ctl clear
    """
    if assignments != ("clear",):
        _fault_values(assignments)  # refuse bad names before the simulator sees them
    control.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(control, ("\n".join(assignments) + "\n").encode("utf-8"))
    click.echo(f"sent to {control}: {' '.join(assignments)}")


# The simulated DGI e-MCF (HTTP) lives in simulator/emcf/; its commands hang under `sim emcf`.
from .emcf.cli import emcf as _emcf  # noqa: E402  (after `sim` is defined)

sim.add_command(_emcf)
