"""The agent's one HTTP client to the bundled cloud: enrollment, credentials, sync, online
sealing (agent/signers/cloud.py) and device provisioning (the CLI).

One session factory (the agent token as a bearer header, a default timeout), one way to send a
request (`exchange`), one mapping of failures to `CloudError` whose detail is safe to show: it
names the cloud and the kind of failure, never the token or a request body.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from fiscal.credential import BlockClosure, DelegatedCredential

from .errors import CloudError  # defined beside the other errors: the CLI catches it without loading aiohttp


def _refused(status: int, reason: str | None, data: Any) -> CloudError:
    detail = data.get("detail") if isinstance(data, dict) else None
    return CloudError(f"cloud answered {status}: {detail or reason}", status)


class CloudClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "CloudClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _s(self) -> aiohttp.ClientSession:
        """The session, made on first use (inside the event loop that will use it)."""
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=headers)
        return self._session

    async def exchange(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                       timeout: float | None = None, parse: bool = True,
                       lenient: bool = False) -> tuple[int, Any, str | None]:
        """Send one request; (status, JSON answer or None, reason phrase).

        aiohttp's own errors are raised as they are: the cloud signer must tell a connection that
        was never opened (`aiohttp.ClientConnectorError`: nothing sent) from one that broke or
        timed out after sending (the cloud may have acted). An answer that is not JSON raises
        ValueError, or with `lenient` becomes {"detail": its first 200 characters}; `parse=False`
        does not read the answer at all. Callers needing no such distinction use the methods
        below, which raise CloudError.
        """
        options: dict[str, Any] = {}
        if data is not None:
            options.update(data=data, headers={"Content-Type": "application/json"})
        elif json_body is not None:
            options["json"] = json_body
        if timeout is not None:  # None would mean no limit at all to aiohttp, not the session's
            options["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self._s().request(method, self.base_url + path, **options) as resp:
            raw = await resp.read() if parse else b""
            return resp.status, _decode(raw, lenient), resp.reason

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            status, data, reason = await self.exchange(method, path, json_body=body)
        except aiohttp.ClientError as exc:
            raise CloudError(f"cloud unreachable at {self.base_url}: {exc.__class__.__name__}") from exc
        except TimeoutError as exc:
            raise CloudError(f"cloud at {self.base_url} did not answer in time") from exc
        if status >= 400:
            raise _refused(status, reason, data)
        return data

    async def dgi_status(self, outlet_id: str, invoice_id: str) -> Any:
        """Where the cloud's forwarding of one invoice to the DGI stands (agent/dgi.py)."""
        return await self._call("GET", f"/v1/outlets/{outlet_id}/invoices/{invoice_id}/dgi")

    async def heartbeat(self) -> dict[str, Any]:
        """Tell the cloud this agent is running (its outlet's "last seen"), sales or not."""
        return await self._call("POST", "/v1/agents/me/heartbeat")

    async def enroll(self, token: str, agent_public_key: str, label: str) -> dict[str, Any]:
        return await self._call("POST", "/v1/enroll", {"token": token, "agent_public_key": agent_public_key,
                                                      "label": label})

    async def close_credential(self, closure: BlockClosure) -> dict[str, Any]:
        return await self._call("POST", f"/v1/credentials/{closure.credential_id}/closure",
                                closure.model_dump(mode="json"))

    async def request_credential(self, block_size: int | None = None,
                                 closure: BlockClosure | None = None,
                                 request_id: str | None = None) -> DelegatedCredential:
        body: dict[str, Any] = {}
        if request_id:
            body["request_id"] = request_id
        if block_size:
            body["block_size"] = block_size
        if closure is not None:
            body["closure"] = closure.model_dump(mode="json")
        data = await self._call("POST", "/v1/credentials", body)
        return DelegatedCredential.model_validate(data)

    async def reconcile_raw(self, bodies: list[str]) -> dict[str, Any]:
        """Upload sealed invoices (their stored JSON, in sealing order) for reconciliation."""
        payload = ('{"invoices":[' + ",".join(bodies) + "]}").encode("utf-8")
        try:
            status, data, reason = await self.exchange("POST", "/v1/reconcile", data=payload)
        except aiohttp.ClientError as exc:
            raise CloudError(f"cloud unreachable at {self.base_url}: {exc.__class__.__name__}") from exc
        except (TimeoutError, ValueError) as exc:
            raise CloudError(f"cloud at {self.base_url} did not answer properly ({exc.__class__.__name__})") from exc
        if status >= 400:
            raise _refused(status, reason, data)
        return data

    async def credential_state(self, credential_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/credentials/{credential_id}")


def _decode(raw: bytes, lenient: bool) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if not lenient:
            raise
        return {"detail": raw.decode(errors="replace")[:200]}


def post_json(base_url: str, token: str, path: str, body: dict[str, Any],
              timeout: float = 10.0) -> tuple[int, Any]:
    """For a CLI command outside any event loop: one POST with the agent token; (status, answer),
    the caller wording the refusals (device provisioning). Raises CloudError when unreachable."""
    async def go() -> tuple[int, Any]:
        async with CloudClient(base_url, token=token, timeout=timeout) as client:
            status, data, _ = await client.exchange("POST", path, json_body=body, lenient=True)
            return status, data

    try:
        return asyncio.run(go())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CloudError(f"the cloud at {base_url} cannot be reached: {exc.__class__.__name__}") from None
