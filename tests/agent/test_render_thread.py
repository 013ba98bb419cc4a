"""Receipts and reports are rendered off the event loop: a seal does not wait behind a render.

The agent runs in-process here (a real journal on SQLite, real HTTP on 127.0.0.1) so the test can
replace a renderer with one that records its thread and blocks until the test lets it go.
"""
from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.api import documents
from agent.api.app import attach, init_app
from agent.config import load_config
from agent.service import AgentService
from tests.support import AgentHarness, invoice

# How long a blocked renderer waits for the test before giving up. Not a timing assertion: with
# rendering on the event loop the seal below cannot even start until the renderer gives up, and
# the test then fails on `released`, however fast or slow the machine.
GIVE_UP = 15


@pytest.fixture
async def agent(tmp_path):
    harness = AgentHarness(tmp_path / "agent")
    harness.add_credential(harness.credential(1, 100))
    service = AgentService.open(load_config(harness.data_dir))
    app = init_app(service.config)
    attach(app, service)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    client.headers = {"Authorization": f"Bearer {harness.api_key}"}
    try:
        yield client
    finally:
        await client.close()
        service.close()


async def _seal(client, request_id: str) -> dict:
    resp = await client.post("/v1/invoices", json=invoice(request_id, n_items=40), headers=client.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_a_seal_completes_while_a_receipt_render_is_blocked(agent, monkeypatch):
    sealed = await _seal(agent, "R-1")
    entered, release, seen = threading.Event(), threading.Event(), {}
    real = documents.render_escpos

    def blocked_render(receipt, width):
        seen["thread"] = threading.get_ident()
        entered.set()
        seen["released"] = release.wait(GIVE_UP)
        return real(receipt, width)

    monkeypatch.setattr(documents, "render_escpos", blocked_render)
    receipt = asyncio.ensure_future(agent.get(f"/v1/invoices/{sealed['id']}/receipt.escpos", headers=agent.headers))
    assert await asyncio.to_thread(entered.wait, GIVE_UP)

    second = await _seal(agent, "R-2")  # the renderer is still blocked
    release.set()
    resp = await receipt
    assert resp.status == 200 and len(await resp.read()) > 100
    assert second["security"]["fiscal_number"] == sealed["security"]["fiscal_number"] + 1
    assert seen["released"] is True, "the seal waited for the renderer"
    assert seen["thread"] != threading.get_ident()


@pytest.mark.parametrize("path, renderer", [
    ("/v1/invoices/{id}/receipt.txt", "render_text"),
    ("/v1/invoices/{id}/receipt.pdf", "render_pdf"),
    ("/v1/invoices/{id}/receipt.escpos", "render_escpos"),
    ("/v1/reports/x.txt", "report_text"),
    ("/v1/reports/a.pdf", "report_pdf"),
])
async def test_every_renderer_runs_off_the_event_loop(agent, monkeypatch, path, renderer):
    sealed = await _seal(agent, "T-1")
    real, threads = getattr(documents, renderer), []

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(documents, renderer, recording)
    resp = await agent.get(path.format(id=sealed["id"]), headers=agent.headers)
    assert resp.status == 200, await resp.text()
    assert len(await resp.read()) > 0
    assert threads and threading.get_ident() not in threads
