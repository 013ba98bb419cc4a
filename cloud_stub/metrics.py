"""The cloud's Prometheus metrics (`GET /metrics`): what an operations team alerts on.

Counted as they happen: reconciliation answers by result and rejections by reason, online seals.
Read at each scrape from the database (so every instance reports the shared state, labelled by
instance): the database's reachability and one round trip's latency, open audit flags by reason,
the DGI forwarding queue by state with the age of its oldest entry, the backlog not yet forwarded
(entries, the oldest one's age, outlets backing off), and when each outlet was last heard from (one series per outlet: why, in docs/monitoring/README.md).
"""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .issuer import last_seen, parse_iso

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _version() -> str:
    try:
        return version("stalela-edge")
    except PackageNotFoundError:
        return "unknown"


class CloudMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        labels = ["instance"]
        self.reconciled = Counter("stalela_cloud_reconciled", "Invoices answered by reconciliation, by result.",
                                  labels + ["result"], registry=r)
        self.rejections = Counter("stalela_cloud_rejections", "Invoices rejected by reconciliation, by reason.",
                                  labels + ["reason"], registry=r)
        self.seals = Counter("stalela_cloud_online_seals", "Invoices sealed online (cloud mode).", labels, registry=r)
        self.db_up = Gauge("stalela_cloud_db_up", "1 when the database answered the last scrape.", labels, registry=r)
        self.db_latency = Gauge("stalela_cloud_db_latency_seconds", "One read transaction's round trip at the last "
                                "scrape.", labels, registry=r)
        self.open_flags = Gauge("stalela_cloud_open_flags", "Open audit flags, by reason.", labels + ["reason"],
                                registry=r)
        self.dgi_queue = Gauge("stalela_cloud_dgi_queue", "DGI forwarding entries, by state.", labels + ["state"],
                               registry=r)
        self.dgi_oldest = Gauge("stalela_cloud_dgi_oldest_seconds", "Age of the oldest DGI forwarding entry in "
                                "each state.", labels + ["state"], registry=r)
        self.dgi_backlog = Gauge("stalela_cloud_dgi_backlog", "Ledger entries the DGI forwarding has not passed yet "
                                 "(0 while forwarding is off).", labels, registry=r)
        self.dgi_backlog_oldest = Gauge("stalela_cloud_dgi_backlog_oldest_seconds", "How long the oldest of them "
                                        "has waited since the cloud recorded it (0 when none).", labels, registry=r)
        self.dgi_failing = Gauge("stalela_cloud_dgi_failing_outlets", "Outlets whose DGI forwarding is backing off "
                                 "after a failure.", labels, registry=r)
        self.outlet_last_seen = Gauge(
            "stalela_cloud_outlet_last_seen_timestamp_seconds",
            "Unix time the outlet was last heard from: its newest ledger entry, credential or MCF contact "
            "(outlets never heard from have no series).", labels + ["outlet", "merchant"], registry=r)
        info = Gauge("stalela_cloud_build_info", "The running version.", labels + ["version"], registry=r)
        info.labels(self.instance, _version()).set(1)

    def count_reconcile(self, answer: dict) -> None:
        for result in answer.get("results") or []:
            status = result.get("status", "unknown")
            self.reconciled.labels(self.instance, status).inc()
            if status == "rejected":
                self.rejections.labels(self.instance, result.get("reason") or "unknown").inc()

    def scrape(self, store) -> bytes:
        """The exposition text, after reading the shared state (runs off the event loop)."""
        started = time.perf_counter()
        try:
            with store.read() as tx:
                flags = tx.open_flag_counts()
                queue = tx.dgi_queue_by_state()
                # The latency is that of these two small reads, not of the per-outlet one below,
                # which grows with the number of outlets.
                latency = time.perf_counter() - started
                contacts = tx.outlets_last_contact()
                backlog = tx.dgi_backlog()
        except Exception:  # a database that does not answer is what this scrape reports
            self.db_up.labels(self.instance).set(0)
            # No outlet is "silent" because the database is: StalelaCloudDatabaseDown says so.
            self.outlet_last_seen.clear()
            return generate_latest(self.registry)
        self.db_up.labels(self.instance).set(1)
        self.db_latency.labels(self.instance).set(latency)
        self.open_flags.clear()
        for row in flags:
            self.open_flags.labels(self.instance, row["reason"]).set(row["n"])
        self.dgi_queue.clear()
        self.dgi_oldest.clear()
        now = datetime.now(timezone.utc)
        for row in queue:
            self.dgi_queue.labels(self.instance, row["state"]).set(row["n"])
            if row["oldest"]:
                age = (now - datetime.fromisoformat(row["oldest"])).total_seconds()
                self.dgi_oldest.labels(self.instance, row["state"]).set(max(0.0, age))
        self._backlog(backlog, now)
        self.outlet_last_seen.clear()
        for row in contacts:
            seen = last_seen(row)
            if seen is not None:
                self.outlet_last_seen.labels(self.instance, row["id"], row["merchant_nif"]).set(
                    parse_iso(seen).timestamp())
        return generate_latest(self.registry)


    def _backlog(self, queues: list[dict], now: datetime) -> None:
        waiting = failing = 0
        oldest = 0.0
        for q in queues:
            behind = max(0, (q["last_seq"] or 0) - q["next_seq"] + 1)
            waiting += behind
            failing += q["failures"] > 0
            if behind and q["head_recorded_at"]:
                age = (now - datetime.fromisoformat(q["head_recorded_at"])).total_seconds()
                oldest = max(oldest, age)
        self.dgi_backlog.labels(self.instance).set(waiting)
        self.dgi_backlog_oldest.labels(self.instance).set(oldest)
        self.dgi_failing.labels(self.instance).set(failing)
