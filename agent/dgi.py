"""What the DGI answered for one of this outlet's invoices, as the cloud's forwarder recorded it.

The cloud forwards every invoice it holds to the DGI's e-MCF (docs/dgi-forwarding.md) and keeps
the answer beside its ledger entry. `GET /v1/invoices/{id}` shows it as `dgi`: fetched from the
cloud when asked, kept in memory once final (normalized, device-reported), and not asked again
for a while after the cloud failed to answer, so that a cloud outage never slows the POS down.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from aiohttp import web

from .cloud_client import CloudClient, CloudError

FINAL = ("normalized", "device_reported")
UPLOADED = ("accepted", "duplicate")
BUDGET = 1.0  # seconds a GET /v1/invoices/{id} may wait for the cloud
QUIET = 30.0  # seconds without asking after the cloud failed to answer
DGI_SCHEMA = {"type": "object", "description": "The DGI's e-MCF answer, through the cloud (docs/dgi-forwarding.md)",
              "properties": {"state": {"type": "string"}}, "required": ["state"]}


class DgiAnswers:
    def __init__(self, client: CloudClient | None):
        self.client = client
        self._final: dict[str, dict] = {}
        self._quiet_until = 0.0

    async def of(self, invoice: dict) -> dict[str, Any]:
        invoice_id, outlet_id = str(invoice.get("id", "")), str(invoice.get("outlet_id", ""))
        if invoice_id in self._final:
            return self._final[invoice_id]
        if (invoice.get("sync") or {}).get("state") not in UPLOADED:
            return {"state": "not_uploaded"}  # the cloud forwards what it holds
        if self.client is None or self.client.token is None:
            return {"state": "unknown", "reason": "the agent is not enrolled with a cloud"}
        if time.monotonic() < self._quiet_until:
            return {"state": "unknown", "reason": "the cloud did not answer lately"}
        try:
            answer = await asyncio.wait_for(self.client.dgi_status(outlet_id, invoice_id), BUDGET)
        except (CloudError, asyncio.TimeoutError) as exc:
            self._quiet_until = time.monotonic() + QUIET
            return {"state": "unknown", "reason": str(exc) or "the cloud did not answer in time"}
        answer = {k: v for k, v in (answer or {}).items() if k not in ("invoice_id", "seq")}
        if answer.get("state") in FINAL:
            self._final[invoice_id] = answer
        return answer or {"state": "unknown"}


DGI = web.AppKey("dgi_answers", DgiAnswers)


def answers_ctx(config):
    """aiohttp cleanup context: a cloud client of its own (the agent's token) for these reads."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        token = config.token_path.read_text("utf-8").strip() if config.token_path.exists() else None
        client = CloudClient(config.cloud_url, token=token, timeout=BUDGET) if config.cloud_url else None
        app[DGI] = DgiAnswers(client)
        yield
        if client is not None:
            await client.close()
    return ctx
