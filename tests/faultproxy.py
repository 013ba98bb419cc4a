"""A real TCP proxy on 127.0.0.1 in front of the cloud that injects link faults.

Modes (set `proxy.mode` at any time):
  pass      forward both ways
  refuse    accept, then close every new connection at once (the request may or may not be seen)
  (down() / up() stop and restart listening: connections refused, a cloud that is down)
  blackhole accept and read, never answer (slow beyond any timeout)
  error500  answer every request with HTTP 500
  reset     forward the start of the request body, then reset the connection mid-upload
  twice     forward every request to the cloud twice (the cloud sees each batch twice)
  late      hold each request `late_seconds` before forwarding it (a slow link: the cloud sees it late)
  lose      forward the request, then lose the cloud's answer (hold the connection silent)
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.late_seconds = 0.0
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def down(self) -> None:
        """Stop listening: new connections are refused by the kernel (a cloud that is down)."""
        async def stop():
            self._server.close()
            await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)

    def up(self) -> None:
        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(5)

    def close(self) -> None:
        async def stop():
            self._server.close()
            # Handlers parked in blackhole mode are cancelled so nothing outlives the loop.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length) if length else b""
        return head + body

    async def _forward(self, raw: bytes) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", self.target_port)
        # One request per upstream connection: ask the cloud to close after answering.
        raw = raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1) if b"Connection:" not in raw else raw
        w.write(raw)
        await w.drain()
        answer = await r.read()
        w.close()
        return answer

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        try:
            if mode == "refuse":
                return
            if mode == "reset":
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                               if l.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length // 2)  # half the upload arrived...
                self.requests += 1
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return  # ...then the connection is reset (linger 0 sends RST)
            raw = await self._read_request(reader)
            self.requests += 1
            if mode == "blackhole":
                await asyncio.sleep(3600)
                return
            if mode == "error500":
                body = b'{"type":"about:blank","title":"boom","status":500,"detail":"injected"}'
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/problem+json\r\n"
                             b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
                return
            if mode == "late":
                await asyncio.sleep(self.late_seconds)
            answer = await self._forward(raw)
            if mode == "lose":
                await asyncio.sleep(3600)
                return
            if mode == "twice":
                answer = await self._forward(raw)
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
