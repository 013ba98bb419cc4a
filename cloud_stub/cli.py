"""`stalela cloud ...`: run the bundled cloud ledger and administer it directly on its database."""
from __future__ import annotations

import errno
import functools
import json
import socket
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import click

from fiscal.runtime.cli import clean_errors
from fiscal.runtime.migrations import SchemaTooNew

from fiscal.runtime.settings import toml_value

from .config import DEFAULT_DATA_DIR, TIME_ZONES, CloudConfig, parse_duration
from .settings import CONFIG_ENV, ConfigError, Loaded, default, load, shown, template
from .errors import CloudError
from .repository import StoreError


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_LOADED = "stalela.cloud.loaded"  # the administration command's configuration, in click's context


def data_option(fn):
    """`--config` and `--data` of an administration command: the same configuration as `serve`
    (the file, then STALELA_CLOUD_* variables), so that a command run beside a configured service
    writes to its data folder and database, not to ./cloud-data. The command receives the data
    folder in effect; `_service` opens the database the same configuration names."""
    @functools.wraps(fn)
    def resolved(*args, config_file: Path | None, data_dir: Path | None, **kwargs):
        given = {("server", "data_dir"): ("--data", str(data_dir))} if data_dir is not None else {}
        try:
            loaded = load(config_file, given)
        except ConfigError as exc:
            _refuse(exc.problems)  # the same lines and exit code as `serve`
        click.get_current_context().meta[_LOADED] = loaded
        return fn(*args, data_dir=Path(loaded.settings.server.data_dir), **kwargs)

    resolved = click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="The cloud's data folder (database, issuer key, admin token). [default: "
                                 f"server.data_dir of the configuration, else {DEFAULT_DATA_DIR}]")(resolved)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help=f"The configuration file (TOML) `serve` reads [default: ${CONFIG_ENV}, else none].")(
        resolved)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def print_rows(rows: list[dict], as_json: bool, none: str, line: Callable[[dict], str]) -> None:
    """A listing: the rows as JSON with --json, else one line each (`none` when there is none)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo(none)
    for row in rows:
        click.echo(line(row))


def _explain(exc: BaseException) -> str | None:
    if isinstance(exc, CloudError):
        return exc.detail
    if isinstance(exc, (PermissionError, SchemaTooNew, StoreError)):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"database error: {exc}"
    if type(exc).__module__.startswith("psycopg"):  # PostgreSQL's errors, without importing psycopg
        lines = str(exc).strip().splitlines()
        return f"database error: {lines[0] if lines else type(exc).__name__}"
    return None


# Domain and storage errors become one clean line, never a traceback.
domain_errors = clean_errors(_explain)


@contextmanager
def _opened(data_dir: Path, *, create: bool = False):
    """The cloud service of `data_dir` for one command, closed afterwards."""
    service = _service(data_dir, create=create)
    try:
        yield service
    finally:
        service.close()


def _service(data_dir: Path, *, create: bool = False):
    from .service import CloudService

    # The same database as `serve`: from the environment, the service credential or the
    # configuration file (PostgreSQL when one of them names one), as data_option loaded them.
    database_url = click.get_current_context().meta[_LOADED].database_url
    if not database_url and not create and not CloudConfig(data_dir=data_dir).db_path.exists():
        raise click.ClickException(f"no cloud database in {data_dir} (create it with "
                                   "`stalela cloud merchant add` or `stalela cloud serve`)")
    # An administration command reconciles nothing: no verifier processes to start.
    return CloudService(CloudConfig(data_dir=data_dir, audit_interval=0, verify_workers=0,
                                    database_url=database_url))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cloud() -> None:
    """The bundled Stalela cloud ledger: registry, credentials, online sealing, reconciliation.

    \b
    Example:
      stalela cloud merchant add --data ./cloud-data --nif A1234567B --name "ABC SARL"
      stalela cloud outlet add --data ./cloud-data --merchant A1234567B --id KIN-01 --name "Gombe"
      stalela cloud token create --data ./cloud-data --outlet KIN-01
      stalela cloud serve --data ./cloud-data
    """


# `serve`'s options: (section, key) of the configuration each one sets. They carry no default of
# their own (None: not given); the model's default is shown in the help.
SERVE_KEYS: dict[str, tuple[str, str, str]] = {}


def setting(section: str, key: str, *decls: str, help: str, **kw):
    """An option of `serve` that sets `section.key`, stronger than the environment and the file."""
    def decorate(fn):
        option = click.option(*decls, default=None, help=f"{help} [default: {_default_text(section, key)}; "
                              f"config: {section}.{key}]", **kw)(fn)
        param = option.__click_params__[-1]
        SERVE_KEYS[param.name] = (section, key, param.opts[0])
        return option
    return decorate


def _default_text(section: str, key: str) -> str:
    value = shown(default(section, key))
    if value == "":
        return "none"
    return toml_value(value).strip('"')


def config_file_option(fn):
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help=f"The configuration file (TOML) [default: ${CONFIG_ENV}, else none: "
                                           "the defaults].")(fn)


def _load(config_path: Path | None, cli: dict | None = None) -> Loaded:
    """The effective configuration, or exit 2 with one line per problem (no traceback)."""
    try:
        return load(config_path, cli)
    except ConfigError as exc:
        _refuse(exc.problems)


def _refuse(problems: list[str]):
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    click.echo(f"Error: invalid configuration ({count}):", err=True)
    for line in problems:
        click.echo(f"  {line}", err=True)
    raise SystemExit(2)


@cloud.command()
@config_file_option
@setting("server", "data_dir", "--data", type=click.Path(file_okay=False), help="The data folder.")
@setting("server", "host", "--host", help="Address to listen on.")
@setting("server", "port", "--port", type=int, help="Port to listen on (0: any free port, printed in the ready line).")
@setting("server", "log_level", "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
         help="Least severe level logged.")
@setting("server", "workers", "--workers", metavar="N|auto",
         help="Verifier processes that check reconcile batches in parallel (signatures, encodings); "
              "auto: one per CPU; 0: check in the service process.")
@setting("server", "threads", "--threads", type=int, help="Threads running the database calls of HTTP requests.")
@setting("server", "secure_cookies", "--secure-cookies/--no-secure-cookies",
         help="Mark the dashboard's session cookie Secure (served behind a TLS proxy: the browser then never "
              "sends it over plain HTTP).")
@setting("database", "url", "--database-url", metavar="URL",
         help="A postgresql://user@host:port/dbname URL to keep the ledger in PostgreSQL (several instances may "
              "share it); it carries a password: prefer database.url_file or the service credential.")
@setting("ledger", "block_size", "--block-size", type=int, help="Fiscal numbers per delegated credential.")
@setting("ledger", "validity", "--validity", metavar="DURATION", help="Validity of a delegated credential (e.g. 12h).")
@setting("ledger", "gap_grace", "--gap-grace", metavar="DURATION",
         help="How long a settled credential's missing numbers wait before they are flagged.")
@setting("dgi", "url", "--dgi-url", metavar="URL",
         help="The DGI's e-MCF base URL: forward every sealed invoice there (off without it). "
              "Tokens per outlet: `stalela cloud dgi token`.")
@setting("dgi", "concurrency", "--dgi-concurrency", type=int, help="Outlets forwarded at the same time by this instance.")
@setting("dgi", "rate", "--dgi-rate", type=float,
         help="Calls per second per outlet to the DGI (0: as fast as the DGI's 429s allow).")
@setting("dgi", "lease", "--dgi-lease", metavar="DURATION",
         help="How long an instance holds an outlet's queue without renewing it: after a crash, another "
              "instance (or the restarted one) takes the outlet over after this long.")
@setting("dgi", "lookup", "--dgi-lookup/--no-dgi-lookup",
         help="The DGI answers GET /api/invoice/{uid}: a lost confirm answer is resolved by asking. "
              "Without it such an entry is quarantined for an operator.")
@setting("dgi", "poll", "--dgi-poll", metavar="DURATION",
         help="Time between looks for new ledger entries to forward when idle (a number: seconds).")
@domain_errors
def serve(config_path: Path | None, **options) -> None:
    """Run the cloud ledger service (creates the database and issuer key on first run).

    Settings, strongest first: these options, STALELA_CLOUD_<SECTION>__<KEY> environment
    variables, the --config file, the defaults (`stalela cloud config template` lists every key).
    An invalid configuration or a busy port is refused (exit 2 / 1) before anything is created.

    Logs one JSON line per event on stderr (readable text on a terminal); `cloud.ready` carries
    the port. Stops cleanly on SIGTERM or Ctrl-C.

    \b
    Example:
      stalela cloud serve --data ./cloud-data --port 8710 --workers 2
      stalela cloud serve --config /etc/stalela/cloud.toml
      stalela cloud serve --data ./cloud-data --dgi-url https://emcf.example/ --dgi-concurrency 64
    """
    from . import logs
    from .server import run

    cli = {SERVE_KEYS[name][:2]: (SERVE_KEYS[name][2], value) for name, value in options.items() if value is not None}
    loaded = _load(config_path, cli)
    config = CloudConfig.from_settings(loaded)
    _check_port_free(config.host, config.port)
    logs.configure(level=loaded.settings.server.log_level)
    try:
        run(config)
    except OSError as exc:
        # Lost the race for the port after the check, or another network error at start.
        raise click.ClickException(_listen_error(config.host, config.port, exc)) from None


@cloud.group("config")
def config_group() -> None:
    """The configuration of `stalela cloud serve`: check it, or print a template.

    Sources, strongest first: `serve`'s options, STALELA_CLOUD_<SECTION>__<KEY> environment
    variables, the TOML file (--config or $STALELA_CLOUD_CONFIG), the defaults.

    \b
    Example:
      stalela cloud config template > /etc/stalela/cloud.toml
      stalela cloud config check --config /etc/stalela/cloud.toml
    """


@config_group.command("check")
@config_file_option
@json_option
def config_check(config_path: Path | None, as_json: bool) -> None:
    """Validate the configuration and print every effective value with its origin.

    The origin is `default`, `file`, `env NAME` or a secret's file or credential. Secret files
    are read (so an unreadable one is reported) but never printed: a password in the database
    URL is shown as ***. Exit codes: 0 valid; 2 invalid, one line per problem.

    \b
    Example:
      stalela cloud config check --config /etc/stalela/cloud.toml
      STALELA_CLOUD_SERVER__PORT=8711 stalela cloud config check --config cloud.toml --json
    """
    try:
        loaded = load(config_path)
    except ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "errors": exc.problems}, indent=2, ensure_ascii=False))
            raise SystemExit(2)
        _refuse(exc.problems)
    rows = loaded.rows()
    source = str(loaded.config_file) if loaded.config_file else None
    if as_json:
        click.echo(json.dumps({"config_file": source, "valid": True, "settings": rows}, indent=2, ensure_ascii=False))
        return
    click.echo(f"configuration{' of ' + source if source else ' (no file: defaults and environment)'}: valid")
    shown_values = [json.dumps(r["value"], ensure_ascii=False) for r in rows]
    width, vwidth = max(len(r["key"]) for r in rows), max(len(v) for v in shown_values)
    for r, value in zip(rows, shown_values):
        click.echo(f"  {r['key']:<{width}}  {value:<{vwidth}}  {r['origin']}")


@config_group.command("template")
def config_template() -> None:
    """Print a configuration file with every key at its default, each one commented.

    \b
    Example:
      stalela cloud config template > cloud.toml
    """
    click.echo(template(), nl=False)


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another `stalela cloud serve` or `stalela up`?): "
                "stop it, or choose another with --port")
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _check_port_free(host: str, port: int) -> None:
    """Refuse a busy port before the data folder is touched (a clean line, not a traceback)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        try:
            sock.bind(address)
        except OSError as exc:
            raise click.ClickException(_listen_error(host, port, exc)) from None


@cloud.group()
def merchant() -> None:
    """Merchants (taxpayers, by NIF).

    \b
    Example:
      stalela cloud merchant add --data ./cloud-data --nif A1234567B --name "ABC SARL"
      stalela cloud merchant token --data ./cloud-data --nif A1234567B
    """


@merchant.command("add")
@data_option
@click.option("--nif", required=True, help="The merchant's NIF (tax id).")
@click.option("--name", required=True, help="The taxpayer's name as printed on receipts.")
@click.option("--address", help="Address printed on receipts.")
@click.option("--rccm", help="Trade register number.")
@click.option("--phone", help="Phone number.")
@click.option("--email", help="E-mail address.")
@click.option("--activity", help="Business activity.")
@click.option("--regime", help="Tax regime.")
@domain_errors
def merchant_add(data_dir: Path, nif: str, name: str, **taxpayer) -> None:
    """Register a merchant.

    \b
    Example:
      stalela cloud merchant add --data ./cloud-data --nif A1234567B --name "ABC SARL" \\
          --address "BOULEVARD 23" --rccm RCCM20250124
    """
    with _opened(data_dir, create=True) as service:
        row = service.add_merchant(nif, name, {k: v for k, v in taxpayer.items() if v})
    click.echo(f"merchant {row['nif']} added: {row['name']}")


@merchant.command("token")
@data_option
@click.option("--nif", required=True, help="The merchant's NIF.")
@click.option("--ttl", default="90d", show_default=True, callback=_duration,
              help="How long the token lets the merchant log in (e.g. 30d).")
@click.option("--revoke-all", is_flag=True,
              help="Revoke every dashboard token of the merchant instead (their sessions end).")
@domain_errors
def merchant_token(data_dir: Path, nif: str, ttl, revoke_all: bool) -> None:
    """Issue a read-only dashboard token for a merchant's staff and print it (only its hash is
    stored). With it they log in to /dashboard/ and see that merchant's outlets only.

    \b
    Example:
      stalela cloud merchant token --data ./cloud-data --nif A1234567B --ttl 30d
      stalela cloud merchant token --data ./cloud-data --nif A1234567B --revoke-all
    """
    if revoke_all:
        with _opened(data_dir) as service:
            revoked = service.revoke_merchant_tokens(nif)["revoked"]
        click.echo(f"merchant {nif}: {revoked} dashboard token(s) revoked")
        return
    with _opened(data_dir) as service:
        result = service.create_merchant_token(nif, ttl)
    click.echo(result["token"])
    click.echo(f"(dashboard, read-only, merchant {nif}, expires {result['expires_at']})", err=True)


@cloud.group()
def outlet() -> None:
    """Outlets (one fiscal counter and one agent each).

    \b
    Example:
      stalela cloud outlet add --data ./cloud-data --merchant A1234567B --id KIN-01 --name Gombe
    """


@outlet.command("add")
@data_option
@click.option("--merchant", "merchant_nif", required=True, help="The merchant's NIF.")
@click.option("--id", "outlet_id", required=True, help="Outlet id: A-Z, 0-9 and '-'.")
@click.option("--name", required=True, help="Outlet name.")
@click.option("--tz", "time_zone", type=click.Choice(TIME_ZONES), default=TIME_ZONES[0],
              show_default=True, help="The outlet's time zone.")
@click.option("--isf", help="The outlet's ISF (invoicing system id), if assigned.")
@domain_errors
def outlet_add(data_dir: Path, merchant_nif: str, outlet_id: str, name: str, time_zone: str,
               isf: str | None) -> None:
    """Register an outlet of a merchant.

    \b
    Example:
      stalela cloud outlet add --data ./cloud-data --merchant A1234567B --id LUB-01 \\
          --name "Lubumbashi centre" --tz Africa/Lubumbashi --isf ISF-0001
    """
    with _opened(data_dir) as service:
        row = service.add_outlet(outlet_id, merchant_nif, name, time_zone, isf)
    click.echo(f"outlet {row['id']} added for merchant {row['merchant_nif']} ({row['time_zone']})")


@cloud.command("outlets")
@data_option
@json_option
@domain_errors
def outlets(data_dir: Path, as_json: bool) -> None:
    """List outlets with their counter, agents, ledger size, open flags and last contact.

    \b
    Example:
      stalela cloud outlets --data ./cloud-data
    """
    with _opened(data_dir) as service:
        rows = service.outlets()
    print_rows(rows, as_json, "no outlets", lambda r: (
        f"{r['id']}  {r['name']}  merchant={r['merchant_nif']}  tz={r['time_zone']}  "
        f"next_number={r['next_number']}  agents={r['agents']}  invoices={r['invoices']}  "
        f"open_flags={r['open_flags']}  last_seen={r['last_seen'] or 'never'}"))


@cloud.group()
def token() -> None:
    """One-time enrollment tokens.

    \b
    Example:
      stalela cloud token create --data ./cloud-data --outlet KIN-01 --ttl 24h
    """


@token.command("create")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet the agent will enroll for.")
@click.option("--ttl", default="24h", show_default=True, callback=_duration,
              help="How long the token can be used (e.g. 30m, 24h, 7d).")
@domain_errors
def token_create(data_dir: Path, outlet_id: str, ttl) -> None:
    """Create a one-time enrollment token for an outlet and print it (it is not stored).

    \b
    Example:
      stalela cloud token create --data ./cloud-data --outlet KIN-01 --ttl 2h
    """
    with _opened(data_dir) as service:
        result = service.create_token(outlet_id, ttl)
    click.echo(result["token"])
    click.echo(f"(single use, for outlet {outlet_id}, expires {result['expires_at']})", err=True)


@cloud.group()
def credential() -> None:
    """Delegated credentials.

    \b
    Example:
      stalela cloud credential revoke --data ./cloud-data DC-3F9A1B2C4D5E --reason "box stolen"
    """


@credential.command("revoke")
@data_option
@click.argument("credential_id")
@click.option("--reason", default="revoked by an operator", show_default=True, help="Why.")
@click.option("--effective-at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
              help="When the revocation takes effect (default now; earlier voids invoices sealed "
                   "since then). Without an offset: UTC.")
@domain_errors
def credential_revoke(data_dir: Path, credential_id: str, reason: str, effective_at: datetime | None) -> None:
    """Revoke a delegated credential: invoices it seals from then on are rejected.

    \b
    Example:
      stalela cloud credential revoke --data ./cloud-data DC-3F9A1B2C4D5E \\
          --reason "box stolen" --effective-at 2026-03-01T08:00:00+01:00
    """
    if effective_at is not None and effective_at.tzinfo is None:
        effective_at = effective_at.replace(tzinfo=timezone.utc)
    with _opened(data_dir) as service:
        status = service.revoke_credential(credential_id, reason, effective_at)
    click.echo(f"credential {credential_id} revoked from {status['revoked_at']}")


@cloud.group()
def devices() -> None:
    """MCF devices bound to outlets: only the operator binds them (agents cannot).

    \b
    Example:
      stalela cloud devices bind   --data ./cloud-data --outlet KIN-01 --mid AB01000001 --nif A1234567B
      stalela cloud devices list   --data ./cloud-data --outlet KIN-01
      stalela cloud devices unbind --data ./cloud-data --outlet KIN-01 --mid AB01000001
      stalela cloud devices token  --data ./cloud-data --outlet KIN-01   # for `stalela device provision`
    """


@devices.command("bind")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet the MCF seals for.")
@click.option("--mid", required=True, help="The MCF's machine id (MID).")
@click.option("--nif", required=True, help="The NIF the MCF reports (must be the outlet's merchant's).")
@domain_errors
def devices_bind(data_dir: Path, outlet_id: str, mid: str, nif: str) -> None:
    """Bind an MCF to an outlet: its invoices then count in the outlet's totals.

    \b
    Example:
      stalela cloud devices bind --data ./cloud-data --outlet KIN-01 --mid AB01000001 --nif A1234567B
    """
    with _opened(data_dir) as service:
        device, created = service.bind_device(outlet_id, mid, nif)
    click.echo(f"device {mid} {'bound to' if created else 'already bound to'} outlet {device['outlet_id']}")


@devices.command("unbind")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet the MCF is bound to.")
@click.option("--mid", required=True, help="The MCF's machine id (MID).")
@domain_errors
def devices_unbind(data_dir: Path, outlet_id: str, mid: str) -> None:
    """Unbind an MCF: its later invoices are flagged `unregistered_device` and left out of totals.

    \b
    Example:
      stalela cloud devices unbind --data ./cloud-data --outlet KIN-01 --mid AB01000001
    """
    with _opened(data_dir) as service:
        service.unbind_device(outlet_id, mid)
    click.echo(f"device {mid} unbound from outlet {outlet_id}")


@devices.command("list")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet.")
@json_option
@domain_errors
def devices_list(data_dir: Path, outlet_id: str, as_json: bool) -> None:
    """List an outlet's MCF devices, bound or unbound, and who bound them.

    \b
    Example:
      stalela cloud devices list --data ./cloud-data --outlet KIN-01
    """
    with _opened(data_dir) as service:
        rows = service.devices(outlet_id)
    print_rows(rows, as_json, "no devices", lambda d: (
        f"{d['mid']}  nif={d['nif']}  {'bound' if d['bound'] else 'unbound ' + str(d['unbound_at'])}  "
        f"by={d['bound_by']}  status={d['status']}  last_seen={d['last_seen'] or '-'}"))


@devices.command("token")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet the MCF will be bound to.")
@click.option("--ttl", default="24h", show_default=True, callback=_duration,
              help="How long the token can be used (e.g. 30m, 24h, 7d).")
@domain_errors
def devices_token(data_dir: Path, outlet_id: str, ttl) -> None:
    """Issue a provisioning token: it lets `stalela device provision` bind one MCF to this outlet.

    \b
    Example:
      stalela cloud devices token --data ./cloud-data --outlet KIN-01 --ttl 2h
    """
    with _opened(data_dir) as service:
        result = service.create_provisioning_token(outlet_id, ttl)
    click.echo(result["token"])
    click.echo(f"(binds one MCF to outlet {outlet_id}, expires {result['expires_at']})", err=True)


@cloud.command("flags")
@data_option
@click.option("--outlet", "outlet_id", help="Only this outlet.")
@click.option("--open", "open_only", is_flag=True, help="Only unresolved flags.")
@json_option
@domain_errors
def flags(data_dir: Path, outlet_id: str | None, open_only: bool, as_json: bool) -> None:
    """List audit flags (gaps in number blocks, invoices refused for the tax rules, unregistered devices).

    \b
    Example:
      stalela cloud flags --data ./cloud-data --open
    """
    with _opened(data_dir) as service:
        rows = service.flags(outlet_id, open_only)
    print_rows(rows, as_json, "no flags", _flag_line)


def _flag_line(f: dict) -> str:
    numbers = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in f["numbers"])
    state = f"resolved {f['resolved_at']}" if f["resolved_at"] else "open"
    return f"#{f['id']} {f['outlet_id']} {f['reason']} numbers={numbers} {state}: {f['detail']}"


@cloud.command("audit")
@data_option
@click.option("--outlet", "outlet_id", help="Only this outlet.")
@domain_errors
def audit_cmd(data_dir: Path, outlet_id: str | None) -> None:
    """Run gap detection now (the server also runs it every minute).

    \b
    Example:
      stalela cloud audit --data ./cloud-data
    """
    with _opened(data_dir) as service:
        new = service.audit(outlet_id)
    click.echo(f"{len(new)} new flag(s)")


@cloud.command("verify")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet whose ledger to check.")
@domain_errors
def verify_cmd(data_dir: Path, outlet_id: str) -> None:
    """Check an outlet's ledger hash chain and every stored invoice's hash.

    \b
    Example:
      stalela cloud verify --data ./cloud-data --outlet KIN-01
    """
    with _opened(data_dir) as service:
        result = service.verify_ledger(outlet_id)
    if not result["valid"]:
        for problem in result["problems"]:
            click.echo(problem, err=True)
        raise click.ClickException(f"ledger of {outlet_id} is NOT valid ({len(result['problems'])} problem(s))")
    archived = f" after {result['archived']} archived" if result["archived"] else ""
    click.echo(f"ledger of {outlet_id} valid: {result['entries']} entries{archived}")


@cloud.group("ledger")
def ledger_group() -> None:
    """Archive old months of the ledger (PostgreSQL) and list the archives.

    \b
    Example:
      stalela cloud ledger archive --config cloud.toml --month 2026-01
      stalela cloud ledger archives --config cloud.toml
    """


@ledger_group.command("archive")
@data_option
@click.option("--month", required=True, help="The month to archive, YYYY-MM: a past month, the oldest still in the ledger.")
@domain_errors
def ledger_archive(data_dir: Path, month: str) -> None:
    """Detach a past month's ledger partition and record what it held (PostgreSQL).

    The month's entries leave the ledger but not the database: the command prints how to dump
    the table and drop it. Their numbers stay used, and `verify` goes on checking each outlet's
    chain from its last archived entry (docs/cloud-scaling.md, "Archiving a month").

    \b
    Example:
      stalela cloud ledger archive --config cloud.toml --month 2026-01
    """
    with _opened(data_dir) as service:
        done = service.archive_ledger_month(month)
    name = done["partition"]
    click.echo(f"{name}: {done['entries']} entries of {done['outlets']} outlet(s) detached and recorded as archived")
    click.echo("Next, keep a dump with the backups, then drop the table:", err=True)
    click.echo(f"  pg_dump --format=custom --table={name} --file {name}.dump \"$DATABASE_URL\"", err=True)
    click.echo(f"  psql \"$DATABASE_URL\" -c 'DROP TABLE {name}'", err=True)


@ledger_group.command("archives")
@data_option
@json_option
@domain_errors
def ledger_archives(data_dir: Path, as_json: bool) -> None:
    """List the archived months, and whether each one's table still waits to be dumped and dropped.

    \b
    Example:
      stalela cloud ledger archives --config cloud.toml
    """
    with _opened(data_dir) as service:
        rows = service.ledger_archives()
    print_rows(rows, as_json, "no archived month", lambda a: (
        f"{a['month']}  {a['partition']}  {a['entries']} entries  archived {a['archived_at']}  "
        + ("table still in the database (dump it, then drop it)" if a["table_present"] else "table dropped")))


# -- DGI forwarding (docs/dgi-forwarding.md) --------------------------------------------------


@cloud.group()
def dgi() -> None:
    """Forwarding to the DGI's e-MCF: tokens, status, quarantine release.

    \b
    Example:
      stalela cloud dgi token --data ./cloud-data --outlet KIN-01 --token-file pos.jwt
      stalela cloud dgi status --data ./cloud-data
      stalela cloud dgi release --data ./cloud-data --outlet KIN-01 --seq 42
    """


@dgi.command("token")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet whose point of sale the token is for.")
@click.option("--token-file", type=click.File("r"), help="File holding the e-MCF token the DGI issued ('-': stdin).")
@click.option("--remove", is_flag=True, help="Forget the outlet's token (its forwarding stops).")
@domain_errors
def dgi_token(data_dir: Path, outlet_id: str, token_file, remove: bool) -> None:
    """Set the e-MCF token (JWT) of an outlet's point of sale; a running cloud picks it up.

    The token is a secret: it is read from a file or stdin, never from the command line.

    \b
    Example:
      stalela cloud dgi token --data ./cloud-data --outlet KIN-01 --token-file pos.jwt
      stalela cloud dgi token --data ./cloud-data --outlet KIN-01 --remove
    """
    from .forwarder import save_token

    if remove == (token_file is not None):
        raise click.UsageError("give --token-file or --remove (one of them)")
    with _opened(data_dir) as service:
        service.outlet(outlet_id)  # refuses an unknown outlet with a clear line
    token = None
    if token_file is not None:
        token = token_file.read().strip()
        if not token or not (token.isascii() and token.isprintable()) or " " in token:
            raise click.ClickException("the token file holds no token (printable ASCII, no spaces)")
    try:
        save_token(CloudConfig(data_dir=data_dir).dgi_tokens_path, outlet_id, token)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"DGI token of {outlet_id} {'removed' if remove else 'set'}")


@dgi.command("status")
@data_option
@click.option("--outlet", "outlet_id", help="Only this outlet (and list its quarantined entries).")
@json_option
@domain_errors
def dgi_status(data_dir: Path, outlet_id: str | None, as_json: bool) -> None:
    """Forwarding per outlet: entries waiting, normalized, device-reported, quarantined, last error.

    \b
    Example:
      stalela cloud dgi status --data ./cloud-data
      stalela cloud dgi status --data ./cloud-data --outlet KIN-01 --json
    """
    from . import forwarding
    from .forwarder import load_tokens

    with _opened(data_dir) as service:
        rows = [forwarding.outlet_status(service.store, outlet_id)] if outlet_id else forwarding.all_status(service.store)
    try:
        tokens = load_tokens(CloudConfig(data_dir=data_dir).dgi_tokens_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for r in rows:
        r["has_token"] = r["outlet_id"] in tokens  # whether it is forwarded at all (never the token)
    if as_json:
        click.echo(json.dumps(rows if outlet_id is None else rows[0], indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no outlets")
    for r in rows:
        c = r["counts"]
        click.echo(f"{r['outlet_id']:16} waiting {r['waiting']:>6}  normalized {c.get('normalized', 0):>6}  "
                   f"device {c.get('device_reported', 0):>5}  quarantined {c.get('quarantined', 0):>4}"
                   + ("" if r["has_token"] else "  (no DGI token: not forwarded)")
                   + (f"  last error: {r['last_error']}" if r["last_error"] else ""))
        if outlet_id:
            for q in r["quarantined"]:
                click.echo(f"  seq {q['seq']:>6}  {q['invoice_id']}  {q['error_code']}: {q['error_desc']}")


@dgi.command("release")
@data_option
@click.option("--outlet", "outlet_id", required=True, help="The outlet.")
@click.option("--seq", type=click.IntRange(min=1), help="The ledger entry to send again [all quarantined].")
@domain_errors
def dgi_release(data_dir: Path, outlet_id: str, seq: int | None) -> None:
    """Send quarantined entries to the DGI again (after the cause was fixed).

    \b
    Example:
      stalela cloud dgi release --data ./cloud-data --outlet KIN-01 --seq 42
      stalela cloud dgi release --data ./cloud-data --outlet KIN-01
    """
    from . import forwarding

    with _opened(data_dir) as service:
        released = forwarding.release(service.store, outlet_id, seq, "operator (cli)", service.now())
    if not released:
        click.echo(f"{outlet_id}: nothing quarantined")
        return
    click.echo(f"{outlet_id}: released {len(released)} entr{'y' if len(released) == 1 else 'ies'} "
               f"(seq {', '.join(map(str, released))})")
