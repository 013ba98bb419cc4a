"""The agent's client for the bundled cloud's API (enrollment, credentials)."""
from __future__ import annotations

from typing import Any

import aiohttp

from fiscal.credential import BlockClosure, DelegatedCredential


class CloudError(Exception):
    """The cloud refused or could not be reached; `detail` is safe to show a technician."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


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
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._s().request(method, self.base_url + path, json=body, headers=headers) as resp:
                data = await resp.json(content_type=None) if resp.content_length != 0 else None
                if resp.status >= 400:
                    detail = data.get("detail") if isinstance(data, dict) else None
                    raise CloudError(f"cloud answered {resp.status}: {detail or resp.reason}", resp.status)
                return data
        except aiohttp.ClientError as exc:
            raise CloudError(f"cloud unreachable at {self.base_url}: {exc.__class__.__name__}") from exc
        except TimeoutError as exc:
            raise CloudError(f"cloud at {self.base_url} did not answer in time") from exc

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
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            async with self._s().post(self.base_url + "/v1/reconcile", data=payload, headers=headers) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    detail = data.get("detail") if isinstance(data, dict) else None
                    raise CloudError(f"cloud answered {resp.status}: {detail or resp.reason}", resp.status)
                return data
        except aiohttp.ClientError as exc:
            raise CloudError(f"cloud unreachable at {self.base_url}: {exc.__class__.__name__}") from exc
        except (TimeoutError, ValueError) as exc:
            raise CloudError(f"cloud at {self.base_url} did not answer properly ({exc.__class__.__name__})") from exc

    async def credential_state(self, credential_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/credentials/{credential_id}")
