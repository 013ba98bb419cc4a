"""The cloud's Prometheus metrics (`GET /metrics`): what an operations team alerts on.

Counted as they happen: reconciliation answers by result and rejections by reason, online seals.
Read at each scrape from the database (so every instance reports the shared state, labelled by
instance): the database's reachability and one round trip's latency, open audit flags by reason,
and the DGI forwarding queue by state with the age of its oldest entry.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

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
        except Exception:  # a database that does not answer is what this scrape reports
            self.db_up.labels(self.instance).set(0)
            return generate_latest(self.registry)
        self.db_up.labels(self.instance).set(1)
        self.db_latency.labels(self.instance).set(time.perf_counter() - started)
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
        return generate_latest(self.registry)
