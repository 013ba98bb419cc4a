"""A real TCP relay on 127.0.0.1 that can be cut: a database server that vanishes and comes back.

Bytes go through unchanged both ways. `cut()` stops listening and closes every open connection
(the client sees its connections break and new ones refused, as when the server or the network
goes down); `restore()` listens again on the same port.
"""
from __future__ import annotations

import asyncio
import threading


class TcpCut:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcpcut", daemon=True)
        self._thread.start()
        self._do(self._listen())

    def _do(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        async def cut() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()  # a reset, not a polite close: the link is gone
            self._writers.clear()
            await self._server.wait_closed()
        self._do(cut())

    def restore(self) -> None:
        self._do(self._listen())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
