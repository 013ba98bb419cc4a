"""Receipts, reports and exports over HTTP. Routes are added by `add_routes` (filled in by the
receipts/reports work; until then the agent serves none of these endpoints)."""
from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    return None
