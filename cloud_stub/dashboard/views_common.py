"""What several pages show the same way: query parameters, times, credential figures."""
from __future__ import annotations

from datetime import datetime

from aiohttp import web

from ..errors import Invalid
from ..issuer import parse_iso


def int_param(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    text = request.query.get(name, "")
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or not lo <= int(text) <= hi:
        raise Invalid("bad_parameter", f"`{name}` must be an integer between {lo} and {hi}")
    return int(text)


def choice_param(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    text = request.query.get(name, "")
    if text == "":
        return None
    if text not in choices:
        raise Invalid("bad_parameter", f"`{name}` is one of {', '.join(choices)}")
    return text


def text_param(request: web.Request, name: str, longest: int = 64) -> str | None:
    text = request.query.get(name, "").strip()
    if not text:
        return None
    if len(text) > longest or not text.isprintable():
        raise Invalid("bad_parameter", f"`{name}` is at most {longest} printable characters")
    return text


def seconds_between(later: str | None, earlier: str | None) -> float | None:
    if not later or not earlier:
        return None
    return round((parse_iso(later) - parse_iso(earlier)).total_seconds(), 3)


def credential_figures(row: dict, now: datetime) -> dict:
    """A credential as an operator reads it: its block, the numbers left after the highest one
    the ledger holds, and the time left."""
    if row.get("revoked_at"):
        state = "revoked"
    elif row.get("closed_at"):
        state = "closed"
    elif now >= parse_iso(row["not_after"]):
        state = "expired"
    else:
        state = "active"
    used = row.get("closed_last_used") if row.get("closed_at") else row.get("last_used")
    left = 0 if state != "active" else row["block_end"] - max(used or row["block_start"] - 1, row["block_start"] - 1)
    return {"id": row["id"], "state": state, "block_start": row["block_start"], "block_end": row["block_end"],
            "last_used": row.get("last_used"), "numbers_left": left, "not_after": row["not_after"],
            "seconds_left": max(0, int((parse_iso(row["not_after"]) - now).total_seconds()))}
