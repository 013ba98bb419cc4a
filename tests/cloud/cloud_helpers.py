"""Test helpers for the cloud: a clock, agents that seal delegated invoices, an HTTP harness."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from aiohttp.test_utils import TestClient

from fiscal.protocol import GENESIS_HASH
from fiscal.credential import BlockClosure, DelegatedCredential
from fiscal.models import InvoiceRequest
from fiscal.seal import apply_signature
from fiscal.signing import generate_private_key, public_key_text
from fiscal.tax import compute
from cloud_stub.service import CloudService

_ids = itertools.count(1)


class Clock:
    """The service's clock, moved by the test."""

    def __init__(self, start: datetime | None = None):
        self.now = (start or datetime.now(timezone.utc)).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def invoice_request(price: str = "1160.00", type_: str = "FV", request_id: str | None = None,
                    group: str = "B", reference: str | None = None) -> InvoiceRequest:
    """A one-item request; `reference` (the original's code) makes it a credit note's."""
    n = next(_ids)
    extra = {"reference": {"nature": "COR", "code": reference}} if reference else {}
    return InvoiceRequest.model_validate({**extra,
        "request_id": request_id or f"REQ-{n}",
        "type": type_,
        "invoice_number": f"FAC-{n}",
        "pos_terminal_id": "POS-01",
        "operator": {"id": "1", "name": "Jan"},
        "items": [{"name": "JUS", "type": "BIE", "tax_group": group, "unit_price": price, "quantity": "1"}],
        "payments": [{"method": "E", "amount": price}],
    })


def unsigned_invoice(*, mode: str, outlet: dict, authority_id: str, number: int, timestamp: datetime,
                     prev_hash: str, request: InvoiceRequest | None = None, isf: str = "ISF-1") -> dict[str, Any]:
    request = request or invoice_request()
    result = compute(request, timestamp.date())
    body = request.model_dump(mode="json", exclude={"payments"})
    return {
        "id": f"INV-{next(_ids)}",
        **body,
        "status": "sealed",
        "mode": mode,
        "merchant_nif": outlet["merchant_nif"],
        "outlet_id": outlet["id"],
        "isf": isf,
        "lines": [line.model_dump(mode="json") for line in result.lines],
        "totals": result.totals.model_dump(mode="json"),
        "security": {
            "authority_id": authority_id,
            "counters": {"type": number, "total": number, "label": f"{number}/{number} {request.type}"},
            "fiscal_number": number,
            "timestamp": timestamp.isoformat(),
        },
        "chain": {"prev_hash": prev_hash},
    }


@dataclass
class Agent:
    """An enrolled agent as the test sees it: its key, token and outlet."""

    id: str
    token: str
    outlet: dict
    key: Any = field(repr=False)
    prev_hash: str = GENESIS_HASH

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def seal(self, cred: DelegatedCredential, number: int, *, when: datetime | None = None,
             prev_hash: str | None = None, request: InvoiceRequest | None = None,
             key: Any = None, advance_chain: bool = True,
             tamper: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """A delegated invoice sealed with this agent's key, chained after the previous one.

        `tamper` edits the invoice before it is signed: what a compromised box could sign."""
        moment = (when or datetime.now(timezone.utc)).astimezone(ZoneInfo(self.outlet["time_zone"]))
        invoice = unsigned_invoice(mode="delegated", outlet=self.outlet, authority_id=cred.id, number=number,
                                   timestamp=moment.replace(microsecond=0),
                                   prev_hash=self.prev_hash if prev_hash is None else prev_hash,
                                   request=request)
        if tamper is not None:
            tamper(invoice)
        apply_signature(invoice, key or self.key, cred)
        if advance_chain:
            self.prev_hash = invoice["chain"]["hash"]
        return invoice


def new_key():
    key = generate_private_key()
    return key, public_key_text(key)


class Harness:
    def __init__(self, client: TestClient, service: CloudService, clock: Clock):
        self.client = client
        self.service = service
        self.clock = clock
        self.admin = {"Authorization": f"Bearer {service.admin_token}"}

    async def post(self, path: str, body: Any, headers: dict | None = None, expect: int | None = None) -> Any:
        resp = await self.client.post(path, json=body, headers=headers or {})
        data = await resp.json(content_type=None)
        if expect is not None:
            assert resp.status == expect, data
        return data

    async def get(self, path: str, headers: dict | None = None, expect: int | None = 200) -> Any:
        resp = await self.client.get(path, headers=headers or {})
        data = await resp.json(content_type=None)
        if expect is not None:
            assert resp.status == expect, data
        return data

    async def outlet(self, outlet_id: str = "KIN-01", nif: str = "A1234567B",
                     time_zone: str = "Africa/Kinshasa", isf: str | None = "ISF-1") -> dict:
        resp = await self.client.post("/v1/admin/merchants", headers=self.admin,
                                      json={"nif": nif, "name": f"Merchant {nif}",
                                            "taxpayer": {"address": "BOULEVARD 23"}})
        assert resp.status in (201, 409)
        return await self.post("/v1/admin/outlets", {"id": outlet_id, "merchant_nif": nif, "name": outlet_id,
                                                     "time_zone": time_zone, "isf": isf}, self.admin, 201)

    async def token(self, outlet_id: str, ttl: str | None = None) -> str:
        body = {"ttl": ttl} if ttl else {}
        return (await self.post(f"/v1/admin/outlets/{outlet_id}/tokens", body, self.admin, 201))["token"]

    async def enroll(self, outlet_id: str = "KIN-01") -> Agent:
        key, public = new_key()
        data = await self.post("/v1/enroll", {"token": await self.token(outlet_id), "agent_public_key": public,
                                              "label": "box"}, expect=201)
        return Agent(id=data["agent_id"], token=data["agent_token"], outlet=data["outlet"], key=key)

    async def credential(self, agent: Agent, expect: int = 201, **body: Any) -> DelegatedCredential:
        if isinstance(body.get("closure"), BlockClosure):
            body["closure"] = body["closure"].model_dump(mode="json")
        data = await self.post("/v1/credentials", body, agent.headers, expect)
        return DelegatedCredential.model_validate(data)

    async def reconcile(self, agent: Agent, invoices: list[dict], expect: int = 200) -> dict:
        return await self.post("/v1/reconcile", {"invoices": invoices}, agent.headers, expect)

    async def ledger(self, outlet_id: str, headers: dict | None = None) -> list[dict]:
        return (await self.get(f"/v1/outlets/{outlet_id}/ledger?limit=1000", headers or self.admin))["entries"]

    async def flags(self, outlet_id: str) -> list[dict]:
        return (await self.get(f"/v1/outlets/{outlet_id}/flags", self.admin))["flags"]
