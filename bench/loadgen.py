"""A lean HTTP/1.1 load generator: N keep-alive connections, each sending its next request as
soon as the previous answer is complete (closed loop, like N POS terminals).

Why not aiohttp's client: on this 2-core machine the load generator shares the CPU with the agent
it measures, and aiohttp's client costs ≈ 0.4 ms of CPU per request (building the request,
encoding JSON, parsing the answer into objects). Here every request is built as bytes before the
clock starts and an answer is only split (status line, Content-Length, body), so the client costs
a small fraction of that and the figure is the agent's. The same client measures the empty-handler
round trip beside it (bench/limits.py).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class LoadError(RuntimeError):
    pass


def build_request(path: str, host: str, body: bytes, headers: dict[str, str] | None = None,
                  method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class _Connection(asyncio.Protocol):
    def __init__(self, requests: list[bytes], expect: int, latencies: list[float], done: asyncio.Future,
                 schedule: tuple[float, float] | None = None) -> None:
        self.requests = requests
        self.expect = expect
        self.latencies = latencies
        self.done = done
        self.schedule = schedule  # (first send, seconds between sends) on the perf_counter clock
        self.buffer = b""
        self.next = 0
        self.sent_at = 0.0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        if self.next == len(self.requests):
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        if self.schedule is not None:
            due = self.schedule[0] + self.next * self.schedule[1]
            wait = due - time.perf_counter()
            if wait > 0:
                asyncio.get_running_loop().call_later(wait, self._send_now)
                return
        self._send_now()

    def _send_now(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.write(self.requests[self.next])
        self.next += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return  # the rest of the body is still on its way
        status = int(head[9:12])
        body = self.buffer[end + 4:end + 4 + length]
        self.buffer = self.buffer[end + 4 + length:]
        self.latencies.append(time.perf_counter() - self.sent_at)
        if status != self.expect:
            if not self.done.done():
                self.done.set_exception(LoadError(f"answer {status} instead of {self.expect}: {body[:300]!r}"))
            self.transport.close()
            return
        self._send()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(LoadError(f"connection lost after {self.next} requests: {exc}"))


async def closed_loop(host: str, port: int, requests_per_client: list[list[bytes]], expect: int = 201,
                      rate: float | None = None) -> tuple[float, list[float]]:
    """Run one connection per list of requests; returns (requests/s, latencies in seconds).

    With a `rate` (requests/s offered by all clients together), each client sends on a schedule
    (its sends evenly spaced, the clients' schedules staggered) instead of at once: the latency
    at that load rather than with every client queued. A send waits for the previous answer, so
    a service slower than the rate is seen as an achieved rate below it."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    dones = []
    start = time.perf_counter()
    clients = len(requests_per_client)
    for k, requests in enumerate(requests_per_client):
        done = loop.create_future()
        dones.append(done)
        schedule = None if rate is None else (start + 0.05 + k / rate, clients / rate)
        await loop.create_connection(lambda r=requests, d=done, s=schedule: _Connection(r, expect, latencies, d, s),
                                     host, port)
    await asyncio.gather(*dones)
    elapsed = time.perf_counter() - start
    return sum(len(r) for r in requests_per_client) / elapsed, latencies


def seal_load(url: str, api_key: str, clients: int, per_client: int, prefix: str,
              invoice: Callable[[str], dict]) -> tuple[float, list[float]]:
    """`clients` POS terminals each sealing `per_client` invoices in a closed loop."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    plan = [[build_request("/v1/invoices", host, json.dumps(invoice(f"{prefix}-{c}-{i}")).encode(), headers)
             for i in range(per_client)] for c in range(clients)]
    return asyncio.run(closed_loop(parts.hostname, parts.port, plan))
