"""The files of a service's data folder, named once (the agent's and the cloud's configs)."""
from __future__ import annotations

from pathlib import Path


class DataFile:
    """A class attribute naming a file of `self.data_dir`: `db_path = DataFile("agent.db")`
    reads as `config.db_path == config.data_dir / "agent.db"`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return Path(obj.data_dir).joinpath(*self.parts)
