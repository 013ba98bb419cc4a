"""Reports: X (running totals), Z (sealed daily closing), A (article lines); see docs/reports.md."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from fiscal.reports import a_report, aggregate, article_lines
from .core import (BadPeriod, a_report_for, close_z, get_report, last_z, list_reports, notify_z_closed,
                   offline_health, on_z_closed, report_hash, verify_report, x_report, z_chain_key, z_due)

__all__ = [
    "BadPeriod", "a_report", "a_report_for", "aggregate", "article_lines", "close_z", "get_report", "last_z",
    "list_reports", "notify_z_closed", "offline_health", "on_z_closed", "report_hash", "run_scheduled_z",
    "run_z", "verify_report", "x_report", "z_chain_key", "z_due",
]

log = logging.getLogger("stalela.reports")


async def run_z(service: Any) -> dict:
    """Close the day on a running agent: the Z is computed and stored in one writer transaction
    (serialized with sealing), then the `on_z_closed` callbacks run."""
    health = service.health()
    journal = service.journal
    body = await asyncio.wrap_future(journal.run_in_writer(
        lambda conn: close_z(conn, service.identity, journal.signing_key, health, tz=service.tz)))
    log.info("Z report closed", extra={"event": "report.z_closed", "number": body["number"],
                                       "invoices": body["totals"]["count"]})
    notify_z_closed(body)
    return body


async def run_scheduled_z(service: Any, z_time: str = "23:59", *, check_every: float = 30.0) -> None:
    """Run forever: at `z_time` (HH:MM, outlet's zone) close the day if nobody ran a Z since.
    Start it as a task in the daemon; cancel it on shutdown."""
    datetime.strptime(z_time, "%H:%M")  # fail early on a bad setting
    while True:
        try:
            now_local = datetime.now(service.tz)
            if z_due(service.journal.reader, service.identity.outlet_id, now_local, z_time):
                await run_z(service)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled Z failed", extra={"event": "report.z_failed"})
        await asyncio.sleep(check_every)
