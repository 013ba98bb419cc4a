"""The command line's error boundary, for the agent's and the cloud's commands alike."""
from __future__ import annotations

import functools
from typing import Callable

import click


def clean_errors(explain: Callable[[BaseException], str | None]):
    """A decorator for click commands: an error that `explain` turns into text ends the command
    with that one line (exit 1), never a traceback; any other error goes on up unchanged.
    Domain errors become clean CLI errors here, at the CLI boundary only."""
    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except Exception as exc:
                text = explain(exc)
                if text is None:
                    raise
                raise click.ClickException(text) from None
        return wrapper
    return decorate
