"""The MCF's health as `/v1/health` shows it: a snapshot kept current by the signer's poll.

`health()` never talks to the device (the API must answer at once, even while an invoice is in
flight): it reads the last snapshot. The signer's worker thread updates it after each exchange.
State changes are logged once each (the first failure, the recovery), never every attempt.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone, tzinfo
from typing import Any

from drivers.usb_fiscal_memory.commands import TAXPAYER_LABELS, McfStatus, ServerLinkStatus
from drivers.usb_fiscal_memory.fields import parse_dt
from drivers.usb_fiscal_memory.framing import Status

log = logging.getLogger("stalela.device")

# Status bits that stop the device from opening an invoice.
BLOCKING = {
    "memory_full": "fiscal memory full",
    "clock_not_set": "MCF clock not set",
    "daily_report_required": "the daily report must be made on the MCF",
    "memory_write_error": "fiscal memory write error",
}


def _iso(raw: str, tz: tzinfo) -> str | None:
    """An MCF time (outlet-local, no offset on the wire) as ISO 8601 with the zone's offset, so a
    reader elsewhere (or on UTC) places it right."""
    parsed = parse_dt(raw) if raw else None
    return parsed.replace(tzinfo=tz).isoformat() if parsed else None


class DeviceHealth:
    def __init__(self, url: str, tz: tzinfo) -> None:
        """``tz``: the outlet's zone, whose local time the MCF's clock keeps."""
        self._lock = threading.Lock()
        self.url = url
        self.tz = tz
        self.reachable: bool | None = None  # None: not tried yet
        self.last_error: str | None = None
        self.last_checked: str | None = None
        self.mcf: McfStatus | None = None
        self.status: Status | None = None
        self.taxpayer: dict[str, str] = {}
        self.firmware: dict[str, str] = {}
        self.link: ServerLinkStatus | None = None
        self.rate_problems: list[str] | None = None  # None: not checked yet
        self.pending_intents = 0
        self._logged_flags: frozenset[str] = frozenset()
        self._link_alerted = False

    # -- updates (worker thread) -----------------------------------------------------------
    def reached(self, mcf: McfStatus, status: Status | None) -> bool:
        """A C1h answer. True when the device just came back (or was reached the first time)."""
        with self._lock:
            back = self.reachable is not True
            was_failing = self.reachable is False
            self.reachable = True
            self.last_error = None
            self.mcf, self.status = mcf, status
            self.last_checked = datetime.now(timezone.utc).isoformat(timespec="seconds")
            flags = frozenset(status.active if status else [])
        if was_failing:
            log.info("device reachable again", extra={"event": "device.recovered", "mid": mcf.mid})
        elif back:
            log.info("device reached", extra={"event": "device.reached", "mid": mcf.mid, "nif": mcf.nif})
        if flags != self._logged_flags:
            (log.warning if flags else log.info)(
                "device status bits changed",
                extra={"event": "device.status_bits", "mid": mcf.mid, "flags": sorted(flags)})
            self._logged_flags = flags
        return back

    def failed(self, error: str) -> bool:
        """The link failed. True when it just went down (logged once)."""
        with self._lock:
            down = self.reachable is not False
            self.reachable = False
            self.last_error = error
            self.last_checked = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if down:
            log.warning("device unreachable", extra={"event": "device.unreachable", "error": error})
        return down

    def server_link(self, link: ServerLinkStatus) -> None:
        with self._lock:
            self.link = link
        stale = link.is_stale(self._local_now())
        if stale and not self._link_alerted:
            log.warning("the MCF has not reached the DGI server for more than one day",
                        extra={"event": "device.dgi_link_stale", "last_connection": link.dt or None,
                               "state": link.sta})
        elif not stale and self._link_alerted:
            log.info("the MCF reached the DGI server again", extra={"event": "device.dgi_link_ok"})
        self._link_alerted = stale

    def rates_checked(self, problems: list[str]) -> None:
        with self._lock:
            self.rate_problems = problems
        for problem in problems:
            log.warning("device tax rate differs from the tax table",
                        extra={"event": "device.tax_rate_mismatch", "problem": problem})
        if not problems:
            log.info("device tax rates match the tax table", extra={"event": "device.tax_rates_ok"})

    # -- reading (any thread) --------------------------------------------------------------
    def _local_now(self) -> datetime:
        """Now as the MCF writes times (outlet-local, naive), to age what it reports."""
        return datetime.now(self.tz).replace(tzinfo=None)

    def blocking_reason(self) -> str | None:
        sta = self.status
        if sta is None:
            return None
        for flag, why in BLOCKING.items():
            if getattr(sta, flag):
                return why
        return None

    @property
    def available(self) -> bool:
        return bool(self.reachable) and self.blocking_reason() is None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            mcf, sta, link = self.mcf, self.status, self.link
            body: dict[str, Any] = {
                "available": bool(self.reachable) and self.blocking_reason() is None,
                "reachable": self.reachable,
                "url": self.url,
                "last_checked": self.last_checked,
                "last_error": self.last_error,
                "pending_intents": self.pending_intents,
                "mid": mcf.mid if mcf else None,
                "nif": mcf.nif if mcf else None,
                "taxpayer": {TAXPAYER_LABELS.get(k, k): v for k, v in self.taxpayer.items()},
                "firmware": dict(self.firmware),
            }
        alerts: list[str] = []
        if mcf is not None:
            body["clock"] = _iso(mcf.dt, self.tz)
            body["counters"] = {"total": mcf.tc, "sales": mcf.fvc, "credit_notes": mcf.frc}
            body["last_invoice"] = ({"invoice_number": mcf.dfn, "type": mcf.dft, "at": _iso(mcf.dfdt, self.tz),
                                     "code": mcf.dfs} if mcf.dfn else None)
        bits = {
            "memory_nearly_full": bool(sta and sta.memory_low),
            "memory_full": bool(sta and sta.memory_full),
            "daily_report_required": bool(sta and sta.daily_report_required),
            "clock_not_set": bool(sta and sta.clock_not_set),
            "invoice_open": bool(sta and sta.invoice_open),
            "memory_write_error": bool(sta and sta.memory_write_error),
        }
        body["status_bits"] = bits
        reason = self.blocking_reason()
        if reason:
            alerts.append(reason)
        if bits["memory_nearly_full"] and not bits["memory_full"]:
            alerts.append("fiscal memory nearly full (fewer than 50 records left)")
        if link is not None:
            stale = link.is_stale(self._local_now())
            body["dgi_link"] = {"state": link.sta, "state_text": ServerLinkStatus.STATES.get(link.sta, "unknown"),
                                "last_connection": _iso(link.dt, self.tz), "sent": link.ec, "held": link.dc,
                                "stale": stale}
            if stale:
                alerts.append("the MCF has not reached the DGI server for more than one day")
        else:
            body["dgi_link"] = None
        body["tax_rates"] = {"checked": self.rate_problems is not None,
                             "mismatches": list(self.rate_problems or [])}
        if self.rate_problems:
            alerts.append("the MCF's tax rates differ from the tax table: " + "; ".join(self.rate_problems))
        if self.reachable is False:
            alerts.append(f"device unreachable: {self.last_error}")
        body["alerts"] = alerts
        return body
