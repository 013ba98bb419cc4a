"""The cloud's logs: the one schema of fiscal/runtime/logs.py (JSON lines, text on a terminal).

Callers use `event(name, **fields)` and pass ids, never secrets; secret-named fields are dropped
by the formatter whatever a caller passes by mistake.
"""
from __future__ import annotations

import logging

from fiscal.runtime import logs as schema
from fiscal.runtime.logs import JsonFormatter

log = logging.getLogger("stalela.cloud")

# The name the cloud's formatter had before the shared schema.
JsonLineFormatter = JsonFormatter


def event(name: str, level: int = logging.INFO, msg: str | None = None, **fields) -> None:
    """Log the event `name` (e.g. "agent.enrolled"); `msg` defaults to the name in words."""
    text = msg or name.replace(".", " ").replace("_", " ")
    log.log(level, text, extra={"event": name, "fields": schema.scrub(fields)})


def configure(stream=None, level: int | str = logging.INFO) -> None:
    cloud = schema.configure("stalela.cloud", level, stream)
    # psycopg's pool warns, in its own words, at every failed attempt to reconnect while the
    # database is down (several a second at first). The service logs the outage itself, once at
    # each end (`database.unavailable`, `database.recovered`): only the driver's errors are kept,
    # through the same handler (the one schema), never Python's bare last-resort lines.
    driver = logging.getLogger("psycopg")
    driver.handlers[:] = list(cloud.handlers)
    driver.setLevel(logging.ERROR)
    driver.propagate = False
