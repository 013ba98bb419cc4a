"""One log schema for the agent and the cloud: one line per event, the same fields on both sides.

    {"ts": "2026-05-04T09:12:03.481+00:00", "level": "info", "logger": "stalela.agent.daemon",
     "event": "agent.ready", "msg": "agent ready", <the event's fields>...}

JSON when stderr is a file or a pipe (journald, a collector, the tests); the same fields as one
readable line when it is a terminal. Two ways in, one way out:

- agent style: `log.info("agent ready", extra={"event": "agent.ready", "url": ...})`;
- cloud style: `log.info("human text", extra={"event": "cloud.ready", "fields": {...}})` (the
  `fields` dict lets a field be called `name` or `args`, which `extra` refuses).

Never secrets: a field whose name says it holds one (token, key, PIN, password...) is dropped,
at any depth, and an exception is logged as its type and message only: a traceback quotes local
variables' source lines, request data and sometimes keys.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

# Attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "fields", "event"}

SECRET_NAMES = frozenset({
    "token", "agent_token", "admin_token", "enrollment_token", "access_token", "refresh_token",
    "authorization", "cookie", "private_key", "key", "pin", "password", "passwd", "secret", "api_key",
})
# Suffixes that mark a secret in any field name (`pos_api_key`, `cloud_token`, `device_pin`);
# not `_key` alone, which would also hide `chain_key`, `public_key` or `issuer_key_id`.
_SECRET_SUFFIXES = ("_token", "_secret", "_password", "_pin", "private_key", "api_key")

# A message that is itself an event name ("audit.failed"): the cloud's older calls log that way.
_EVENT_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def scrub(value: Any) -> Any:
    """The value with every secret-named key removed from the dicts inside it."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not (isinstance(k, str) and is_secret(k))}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The schema's fields of a record, in order: ts, level, logger, event, msg, then the event's."""
    msg = record.getMessage()
    event = getattr(record, "event", None)
    if event is None and _EVENT_NAME.match(msg):
        event = msg
    out: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": event,
        "msg": msg,
    }
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    extra.update(getattr(record, "fields", None) or {})
    for key, value in scrub(extra).items():
        if key not in out:
            out[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        exc = record.exc_info[1]
        out["error" if "error" not in out else "exception"] = f"{type(exc).__name__}: {exc}"
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: `09:12:03.481 INFO  agent.ready  agent ready  url=...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        ts, level, logger, event, msg = (fields.pop(k) for k in ("ts", "level", "logger", "event", "msg"))
        rest = " ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in fields.items())
        head = f"{ts} {level.upper():<7} {event or logger}  {msg}"
        return f"{head}  {rest}" if rest else head


def formatter_for(stream: TextIO) -> logging.Formatter:
    isatty = getattr(stream, "isatty", None)
    return TextFormatter() if isatty is not None and isatty() else JsonFormatter()


def configure(logger: str | None = None, level: str | int = "INFO", stream: TextIO | None = None) -> logging.Logger:
    """Send `logger` (the root logger if None) to `stream` (stderr) in the one schema."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(stream))
    target = logging.getLogger(logger)
    target.handlers[:] = [handler]
    target.setLevel(level)
    if logger is not None:
        target.propagate = False
    # aiohttp's access log prints request lines in its own format; the services log their own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return target
