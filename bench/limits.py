"""Physical limits measured in the same run as the figures they bound."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web

from fiscal.canonical import canonical_bytes, reference_canonical_bytes
from fiscal.signing import generate_private_key, load_verifying_key, public_key_text

from .loadgen import build_request, closed_loop
from .workload import sample_sealed_dict


def durable_commit_rate(seconds: float = 2.0) -> float:
    """Rows/s with one row per transaction, WAL + synchronous=FULL (each COMMIT fsyncs)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        conn = sqlite3.connect(Path(d) / "limit.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        body = "x" * 2500
        n = 0
        end = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < end:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t(body) VALUES (?)", (body,))
            conn.execute("COMMIT")
            n += 1
        rate = n / (time.perf_counter() - start)
        conn.close()
        return rate


def signature_rate(n: int = 3000) -> float:
    key = generate_private_key()
    msg = b"RDCSTL01;DC-KIN-001-1;A1234567B;20260301122547+0100;70;4064.00;64.00;" + b"X" * 52
    start = time.perf_counter()
    for _ in range(n):
        key.sign(msg)
    return n / (time.perf_counter() - start)


def verification_rate(n: int = 3000) -> float:
    key = generate_private_key()
    pub = key.public_key()
    msg = b"RDCSTL01;DC-KIN-001-1;A1234567B;20260301122547+0100;70;4064.00;64.00;" + b"X" * 52
    sig = key.sign(msg)
    start = time.perf_counter()
    for _ in range(n):
        pub.verify(sig, msg)
    return n / (time.perf_counter() - start)


def checked_verification_rate(n: int = 3000) -> float:
    """Verifications/s through `VerifyingKey`, as the cloud and `stalela verify` check a valid
    signature (libsodium; OpenSSL is asked only when libsodium refuses)."""
    key = generate_private_key()
    pub = load_verifying_key(public_key_text(key))
    msg = b"RDCSTL01;DC-KIN-001-1;A1234567B;20260301122547+0100;70;4064.00;64.00;" + b"X" * 52
    sig = key.sign(msg)
    start = time.perf_counter()
    for _ in range(n):
        if not pub.verify(sig, msg):
            raise RuntimeError("a valid signature did not verify")
    return n / (time.perf_counter() - start)


def canonicalization(n: int = 2000) -> dict[str, float]:
    doc = sample_sealed_dict()
    out = {}
    for name, fn in (("fast", canonical_bytes), ("rfc8785", reference_canonical_bytes)):
        start = time.perf_counter()
        for _ in range(n):
            fn(doc)
        out[name] = (time.perf_counter() - start) / n
    return out


async def _empty_roundtrip(n: int) -> list[float]:
    async def handler(request):
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    payload = b"{" + b'"x":"' + b"y" * 3000 + b'"}'
    request = build_request("/", f"127.0.0.1:{port}", payload)
    _, lat = await closed_loop("127.0.0.1", port, [[request] * n], expect=200)
    await runner.cleanup()
    return lat


def empty_http_roundtrip(n: int = 1000) -> float:
    """Median seconds of an empty aiohttp handler round trip on loopback (same client as the load)."""
    return statistics.median(asyncio.run(_empty_roundtrip(n)))
