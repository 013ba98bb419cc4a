"""The agent's one client to the cloud (agent/cloud_client.py), against a real HTTP server on
127.0.0.1: the token goes as a bearer header on every path that uses it (the API calls, the
cloud signer, device provisioning), and failures become CloudError details that never quote it."""
from __future__ import annotations

import asyncio
import socket
import threading

import aiohttp
import pytest
from aiohttp import web

from agent.cloud_client import CloudClient, CloudError, post_json

TOKEN = "agent-token-never-shown"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if request.path == "/v1/devices":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        if request.path == "/v1/credentials/c-1":
            return web.json_response({"detail": "no such credential"}, status=404)
        return web.json_response({"ok": True, "results": []})


async def _serve(recorder: Recorder) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_every_call_carries_the_token_and_refusals_are_clean():
    from agent.signers.cloud import CloudSigner

    recorder = Recorder()
    runner, url = await _serve(recorder)
    try:
        async with CloudClient(url, token=TOKEN) as client:
            assert await client.reconcile_raw(['{"id": "x"}']) == {"ok": True, "results": []}
            with pytest.raises(CloudError) as refused:
                await client.credential_state("c-1")
        assert refused.value.status == 404 and refused.value.detail == "cloud answered 404: no such credential"
        signer = CloudSigner(journal=None, base_url=url, token=TOKEN, issuer_public_key="", isf="STL-1")
        try:
            assert await signer.probe() is True
        finally:
            await signer.close()
        # Provisioning runs outside any event loop (a CLI command): its own thread here.
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(
            answer=post_json(url, TOKEN, "/v1/devices", {"mid": "MID-1"})))
        worker.start()
        while worker.is_alive():
            await asyncio.sleep(0.05)
        assert result["answer"] == (502, {"detail": "<html>bad gateway</html>"})
    finally:
        await runner.cleanup()
    assert recorder.seen == [("/v1/reconcile", f"Bearer {TOKEN}"), ("/v1/credentials/c-1", f"Bearer {TOKEN}"),
                             ("/v1/health", f"Bearer {TOKEN}"), ("/v1/devices", f"Bearer {TOKEN}")]


async def test_enrollment_sends_no_authorization_header():
    recorder = Recorder()
    runner, url = await _serve(recorder)
    try:
        async with CloudClient(url) as client:
            await client.enroll("one-time", "PUBLIC", "box")
    finally:
        await runner.cleanup()
    assert recorder.seen == [("/v1/enroll", None)]


async def test_a_closed_port_is_a_connector_error_and_a_clean_cloud_error():
    url = f"http://127.0.0.1:{_closed_port()}"
    async with CloudClient(url, token=TOKEN) as client:
        # The cloud signer relies on this type: a connection never opened means nothing was sent.
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.exchange("POST", "/v1/seal", json_body={}, timeout=2)
        with pytest.raises(CloudError) as unreachable:
            await client.credential_state("c-1")
    assert unreachable.value.detail == f"cloud unreachable at {url}: ClientConnectorError"


def test_provisioning_against_a_closed_port_says_so_without_the_token():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(CloudError) as exc:
        post_json(url, TOKEN, "/v1/devices", {"mid": "MID-1"})
    assert exc.value.detail == f"the cloud at {url} cannot be reached: ClientConnectorError"
    assert TOKEN not in exc.value.detail
