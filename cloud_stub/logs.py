"""Structured logs: one JSON object per line, per event. Callers pass ids, never secrets."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

log = logging.getLogger("stalela.cloud")

# Field names that must never reach a log line, whatever a caller passes by mistake.
_SECRET_FIELDS = frozenset({"token", "agent_token", "admin_token", "authorization", "private_key", "key"})


def event(name: str, level: int = logging.INFO, **fields) -> None:
    clean = {k: v for k, v in fields.items() if k not in _SECRET_FIELDS}
    log.log(level, name, extra={"fields": clean})


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            # The type and message only: a traceback can quote request data and local secrets.
            line["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(stream=None, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger("stalela.cloud")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # aiohttp's access log would print request lines in its own format; the service logs its own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
