"""The one `stalela` command line. Subcommand groups live in their own modules."""
from __future__ import annotations

import importlib

import click


@click.group()
@click.version_option(package_name="stalela-edge")
def cli() -> None:
    """Stalela Edge: the local fiscal service for DRC normalized invoices."""


# (module, attribute) of each command group; a group whose module is absent is skipped so one
# missing optional part never hides the others' help.
COMMANDS = [
    ("agent.cli.up", "up"),
    ("agent.cli.agent_cmd", "agent"),
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
