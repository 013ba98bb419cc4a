"""The one `stalela` command line. Subcommand groups live in their own modules."""
from __future__ import annotations

import importlib

import click

from .common import clean_os_errors

# `-h` is what a new user types first; every command inherits it from the root's context.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


# Each command group: its name, and the module and attribute that define it. A group's module is
# imported only when that group runs (or help lists it): `stalela cloud outlet add` need not load
# the agent's HTTP client, the device driver and the simulator first (each process start costs
# what it imports; technicians' scripts and the tests run hundreds). A group whose module is
# absent is left out, so one missing optional part never hides the others.
COMMANDS = {
    "up": ("agent.cli.up", "up"),
    "agent": ("agent.cli.agent_cmd", "agent"),
    "config": ("agent.cli.config_cmd", "config"),
    "credential": ("agent.cli.credential_cmd", "credential"),
    "verify": ("agent.cli.verify_cmd", "verify"),
    "sync": ("agent.cli.sync_cmd", "sync"),
    "report": ("agent.cli.report_cmd", "report"),
    "export": ("agent.cli.export_cmd", "export"),
    "device": ("agent.cli.device", "device"),
    "sim": ("simulator.cli", "sim"),
    "cloud": ("cloud_stub.cli", "cloud"),
}


def _load(name: str) -> click.Command | None:
    modname, attr = COMMANDS[name]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and modname.startswith(exc.name):
            return None
        raise
    return getattr(mod, attr)


class StalelaGroup(click.Group):
    """The root group: each command group loaded from COMMANDS when asked for, and an OS error no
    command caught becomes one line, never a traceback.

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

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        if name not in self.commands:
            command = _load(name)
            if command is None:
                return None
            self.commands[name] = command
        return self.commands[name]


@click.group(cls=StalelaGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="stalela-edge")
def cli() -> None:
    """Stalela Edge: the local fiscal service for DRC normalized invoices.

    Exit codes (all commands): 0 done (status commands: the outlet can seal); 1 a clean error
    (no enrolled agent in --data, invalid configuration, permission…); 2 usage error; 3 the
    outlet cannot seal. Details and the --json fields: docs/cli.md.
    """
