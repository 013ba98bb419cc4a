"""RFC 9457 problem details: every error the API returns has this shape."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any) -> web.Response:
    body = {"type": type_, "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return web.Response(status=status, text=json.dumps(body, ensure_ascii=False),
                        content_type=PROBLEM_JSON)


def field_path(loc: tuple[Any, ...]) -> str:
    """('items', 2, 'tax_group') -> 'items[2].tax_group' (the form the POS contract promises)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    errors = []
    for err in exc.errors(include_url=False):
        # Drop pydantic's discriminator-ish path parts such as 'function-after[...]'.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p and p.endswith("]")))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (not part of the contract)"
        errors.append({"field": field_path(loc), "message": message})
    return errors
