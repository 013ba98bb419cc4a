"""Option bundles and error handling shared by the CLI commands."""
from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import click

from ..cloud_client import CloudError
from ..config import AgentConfig, ConfigError, load_config
from ..errors import AgentError


def data_option(func):
    return click.option(
        "--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
        default=Path("stalela-data"), envvar="STALELA_DATA", show_default=True, show_envvar=True,
        help="The agent's data folder.")(func)


def load(data_dir: Path) -> AgentConfig:
    try:
        return load_config(data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def domain_errors(func):
    """Turn domain errors into clean CLI messages (no tracebacks) at the CLI boundary only."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CloudError as exc:
            raise click.ClickException(exc.detail) from None
        except AgentError as exc:
            raise click.ClickException(exc.detail) from None
        except PermissionError as exc:
            raise click.ClickException(str(exc)) from None
        except FileNotFoundError as exc:
            raise click.ClickException(f"not found: {exc.filename}") from None
    return wrapper


def run_async(coro):
    return asyncio.run(coro)
