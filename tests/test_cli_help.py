"""Every CLI command is documented: help text with an Example block, and no traceback on --help."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from agent.cli.main import cli


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        path = prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)
        else:
            yield path, cmd


ALL = list(_commands(cli))


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_command_has_help_with_example(path, cmd):
    assert cmd.help and cmd.help.strip(), f"stalela {' '.join(path)} has no help"
    assert "Example" in cmd.help, f"stalela {' '.join(path)} has no Example: block"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_missing_data_folder_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["verify", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "holds no enrolled agent journal" in result.output
