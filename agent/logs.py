"""The agent's logs: the one schema of fiscal/runtime/logs.py (JSON lines, text on a terminal).

Call sites log `log.info("human text", extra={"event": "agent.ready", ...fields})`. Never secrets.
"""
from __future__ import annotations

import logging
from typing import TextIO

from fiscal.runtime.logs import JsonFormatter, configure

# The name the agent's formatter had before the shared schema.
JsonLines = JsonFormatter


def setup(level: str = "INFO", stream: TextIO | None = None) -> None:
    configure(None, level, stream)
    # A renewal woken early while the scheduled one runs is skipped on purpose: not worth a warning.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
