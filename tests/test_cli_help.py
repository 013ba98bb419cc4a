"""Every CLI command is documented: help text with an Example block, and no traceback on --help."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from agent.cli.main import cli


def _commands(group: click.Group, prefix=()):
    for name in sorted(group.list_commands(None)):  # the root loads its groups on demand
        cmd = group.get_command(None, name)
        path = prefix + (name,)
        if isinstance(cmd, click.Group):
            yield path, cmd
            yield from _commands(cmd, path)
        else:
            yield path, cmd


ALL = [(p, c) for p, c in _commands(cli) if not isinstance(c, click.Group)]
EVERY = [((), cli), *_commands(cli)]


def _example_lines(help_text: str) -> list[str]:
    """The lines of the help's Example block, as written in the docstring."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Example:") + 1
    block = []
    for line in lines[start:]:
        if not line.strip() and not block:
            continue
        if not line.strip() or line.strip() == "\b":
            break
        block.append(line.strip())
    return block


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_command_has_help_with_example(path, cmd):
    assert cmd.help and cmd.help.strip(), f"stalela {' '.join(path)} has no help"
    assert "Example" in cmd.help, f"stalela {' '.join(path)} has no Example: block"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_examples_print_as_written(path, cmd):
    # A narrow terminal is where click rewraps a paragraph mid-command; `\b` before the block
    # keeps each example on its own line.
    examples = _example_lines(cmd.help)
    assert examples, f"stalela {' '.join(path)}: empty Example block"
    out = CliRunner().invoke(cli, [*path, "--help"], terminal_width=60).output
    printed = [line.strip() for line in out.splitlines()]
    for example in examples:
        assert example in printed, f"stalela {' '.join(path)} --help wraps {example!r}:\n{out}"


@pytest.mark.parametrize("path,cmd", EVERY, ids=[" ".join(p) or "stalela" for p, _ in EVERY])
def test_dash_h_is_help(path, cmd):
    short = CliRunner().invoke(cli, [*path, "-h"])
    long = CliRunner().invoke(cli, [*path, "--help"])
    assert short.exit_code == 0, short.output
    assert short.output == long.output and "Usage:" in short.output


def test_missing_data_folder_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["verify", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "no enrolled agent in" in result.output
    assert not (tmp_path / "nowhere").exists()
