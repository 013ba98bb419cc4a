"""The one `stalela` command line. Subcommand groups live in their own modules."""
from __future__ import annotations

import importlib

import click

from .common import clean_os_errors

# `-h` is what a new user types first; every command inherits it from the root's context.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class StalelaGroup(click.Group):
    """The root group: an OS error no command caught becomes one line, never a traceback.

    Why here: a data folder owned by another user or an unreadable key can fail in any command,
    and the fix is the same everywhere (run as the service user).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            clean = clean_os_errors(exc)
            if clean is None:
                raise
            raise clean from None


@click.group(cls=StalelaGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="stalela-edge")
def cli() -> None:
    """Stalela Edge: the local fiscal service for DRC normalized invoices.

    Exit codes (all commands): 0 done (status commands: the outlet can seal); 1 a clean error
    (no enrolled agent in --data, invalid configuration, permission…); 2 usage error; 3 the
    outlet cannot seal. Details and the --json fields: docs/cli.md.
    """


# (module, attribute) of each command group; a group whose module is absent is skipped so one
# missing optional part never hides the others' help.
COMMANDS = [
    ("agent.cli.up", "up"),
    ("agent.cli.agent_cmd", "agent"),
    ("agent.cli.config_cmd", "config"),
    ("agent.cli.credential_cmd", "credential"),
    ("agent.cli.verify_cmd", "verify"),
    ("agent.cli.sync_cmd", "sync"),
    ("agent.cli.report_cmd", "report"),
    ("agent.cli.export_cmd", "export"),
    ("agent.cli.device", "device"),
    ("simulator.cli", "sim"),
    ("cloud_stub.cli", "cloud"),
]


def _register() -> None:
    for modname, attr in COMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        cli.add_command(getattr(mod, attr))


_register()
