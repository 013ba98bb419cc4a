"""The simulated MCF on a TCP port, like a serial device behind a serial-to-network adapter.

Reach it with pyserial's ``serial_for_url("socket://127.0.0.1:PORT")``. One SFE at a time, as
on a serial line; the next connection is served when the previous one closes. An unplug closes
the connection and the listening socket; a replug listens on the same port again.
"""
from __future__ import annotations

import select
import socket
import threading
from types import TracebackType

from .engine import MCFEngine
from .stream import POLL_INTERVAL, pump


class TcpLink:
    def __init__(self, engine: MCFEngine, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def start(self) -> str:
        self._listen()
        self._thread = threading.Thread(target=self._run, name="mcf-tcp", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close_client()
        self._close_listener()

    def __enter__(self) -> "TcpLink":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- sockets -----------------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
            listener.listen(1)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]  # port 0: the OS chose; replug keeps it
        self._listener = listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def _read(self, timeout: float) -> bytes | None:
        client = self._client
        if client is None:
            return None
        ready, _, _ = select.select([client], [], [], timeout)
        if not ready:
            return b""
        try:
            data = client.recv(4096)
        except OSError:
            return None
        return data or None  # b"" from recv: the SFE closed the connection

    def _write(self, data: bytes) -> None:
        if self._client is not None:
            try:
                self._client.sendall(data)
            except OSError:
                pass  # the SFE went away; the read side notices

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        faults = self.engine.faults
        while not self._stop.is_set():
            if faults.is_unplugged():
                self._close_client()
                self._close_listener()
                while faults.is_unplugged() and not self._stop.wait(POLL_INTERVAL):
                    pass
                while not self._stop.is_set() and self._listener is None:
                    try:
                        self._listen()
                    except OSError:  # the port is not free again yet
                        self._stop.wait(POLL_INTERVAL)
                continue
            listener = self._listener
            if listener is None:
                break
            ready, _, _ = select.select([listener], [], [], POLL_INTERVAL)
            if not ready:
                continue
            client, _ = listener.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._client = client
            pump(self.engine, self._read, self._write, self._stop)
            self._close_client()
