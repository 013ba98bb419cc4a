"""`stalela config …`: the effective configuration and where each value comes from."""
from __future__ import annotations

import click

from ..config import ConfigError, effective
from .common import data_option, emit_json, json_option


@click.group()
def config() -> None:
    """Check the agent's configuration and where each value comes from.

    Sources, strongest first: STALELA_<SECTION>__<KEY> environment variables, config.toml, the
    defaults.

    \b
    Example:
      stalela config check --data /var/lib/stalela
    """


@config.command()
@data_option
@json_option
def check(data_dir, as_json):
    """Validate the configuration and print every effective value with its origin.

    The origin is `default`, `file` (config.toml) or `env NAME` (an environment variable
    STALELA_<SECTION>__<KEY>, which wins over the file). No secret is printed. Exit codes: 0 the
    configuration is valid; 1 it is not (each problem named as section.key).

    \b
    Example:
      stalela config check --data /var/lib/stalela
      STALELA_SYNC__INTERVAL=10 stalela config check --data /var/lib/stalela --json
    """
    if not (data_dir / "config.toml").is_file() and not (data_dir / "enrollment.json").is_file():
        raise click.ClickException(f"no agent data folder at {data_dir} (no config.toml): run `stalela agent init "
                                   f"--data {data_dir}`, or pass --data (or STALELA_DATA) naming the agent's folder")
    try:
        rows = effective(data_dir)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    if as_json:
        emit_json({"data_dir": str(data_dir), "valid": True,
                   "settings": [{"key": r["key"], "value": list(r["value"]) if isinstance(r["value"], tuple)
                                 else r["value"], "origin": r["origin"]} for r in rows]})
        return
    width = max(len(r["key"]) for r in rows)
    shown = [_show(r["value"]) for r in rows]
    vwidth = max(len(v) for v in shown)
    click.echo(f"configuration of {data_dir}: valid")
    for r, value in zip(rows, shown):
        click.echo(f"  {r['key']:<{width}}  {value:<{vwidth}}  {r['origin']}")


def _show(value) -> str:
    import json

    return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)
