"""A person's browser as the dashboard tests drive it: real HTTP, cookies kept, forms posted
with the tokens the pages carry."""
from __future__ import annotations

import re
from html import unescape
from typing import Any

from aiohttp.test_utils import TestClient

from fiscal.credential import DelegatedCredential


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return unescape(match.group(1))


class Dash:
    def __init__(self, client: TestClient):
        self.client = client

    async def login(self, token: str, expect: int = 303, next_: str | None = None) -> Any:
        page = await self.client.get("/dashboard/login" + (f"?next={next_}" if next_ else ""))
        html = await page.text()
        form = {"login_csrf": field(html, "login_csrf"), "token": token, "next": field(html, "next")}
        resp = await self.client.post("/dashboard/login", data=form, allow_redirects=False)
        assert resp.status == expect, await resp.text()
        return resp

    async def page(self, path: str, expect: int = 200) -> str:
        resp = await self.client.get(path, allow_redirects=False)
        text = await resp.text()
        assert resp.status == expect, (resp.status, text[:500])
        return text

    async def json(self, path: str, expect: int = 200) -> Any:
        resp = await self.client.get(path, allow_redirects=False)
        data = await resp.json(content_type=None)
        assert resp.status == expect, (resp.status, data)
        return data

    async def csrf(self, path: str = "/dashboard/outlets") -> str:
        return field(await self.page(path), "csrf")

    async def post(self, path: str, data: dict, expect: int = 303) -> Any:
        resp = await self.client.post(path, data=data, allow_redirects=False)
        assert resp.status == expect, (resp.status, (await resp.text())[:500])
        return resp


async def gap_outlet(cloud, outlet_id: str = "KIN-01", nif: str = "A1234567B") -> tuple[Any, DelegatedCredential]:
    """An outlet whose agent reconciled numbers 1 and 3 of its block: 2 is a gap (flagged)."""
    await cloud.outlet(outlet_id, nif)
    agent = await cloud.enroll(outlet_id)
    cred = await cloud.credential(agent)
    first = cred.block_start
    result = await cloud.reconcile(agent, [agent.seal(cred, first), agent.seal(cred, first + 2)])
    assert result["accepted"] == 2
    return agent, cred


def quarantine(service, outlet_id: str, code: str = "E-123", desc: str = "refused by the DGI") -> int:
    """Take the outlet's next ledger entry through the forwarder's own records to quarantine."""
    from datetime import timedelta

    from cloud_stub import forwarding

    now = service.now()
    forwarding.add_queues(service.store, now)
    assert forwarding.claim(service.store, "test", [outlet_id], now, timedelta(seconds=30), 1) == [outlet_id]
    work = forwarding.next_work(service.store, outlet_id)
    forwarding.record_quarantine(service.store, work, "test", code, desc, now)
    forwarding.drop(service.store, outlet_id, "test", now)
    return work.seq


def back_off(service, outlet_id: str, seconds: float = 600) -> None:
    """The outlet's forwarding failed (a refusal of service): it waits `seconds` before trying again."""
    from datetime import timedelta

    from cloud_stub import forwarding

    now = service.now()
    forwarding.add_queues(service.store, now)
    assert forwarding.claim(service.store, "test", [outlet_id], now, timedelta(seconds=30), 1) == [outlet_id]
    forwarding.back_off(service.store, outlet_id, "test", seconds, "DGI answered 503", now)
    forwarding.drop(service.store, outlet_id, "test", now)
