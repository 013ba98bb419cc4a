"""The simulated MCF behind a pseudo-terminal, as a USB CDC-ACM device appears to an SFE.

The slave side (``/dev/pts/N``, or a symlink of your choosing such as ``/tmp/ttyMCF``) is what
the SFE opens with pyserial. An unplug closes the pty (the SFE's reads fail like on a real
unplug); a replug creates a new one and points the symlink at it.
"""
from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import tty
from pathlib import Path
from types import TracebackType

from .engine import MCFEngine
from .stream import POLL_INTERVAL, pump


class PtyLink:
    def __init__(self, engine: MCFEngine, link: str | os.PathLike[str] | None = None) -> None:
        self.engine = engine
        self.link = Path(link) if link is not None else None
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Reads started: the pump writes everything one chunk caused before it reads again, so a
        # read that starts after some moment means what was due then has been written.
        self.rounds = 0

    @property
    def path(self) -> str:
        """What an SFE should open: the symlink if there is one, else the slave device."""
        if self.link is not None:
            return str(self.link)
        if self.slave_path is None:
            raise RuntimeError("the pty link is not started")
        return self.slave_path

    def start(self) -> str:
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name="mcf-pty", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close_pty()

    def unread(self) -> int:
        """Bytes the device sent that the SFE has not read yet (0 when unplugged).

        The slave's input queue is shared by every opener, so the slave we hold sees it."""
        slave = self._slave
        if slave is None:
            return 0
        try:
            raw = fcntl.ioctl(slave, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int(struct.unpack("i", raw)[0])

    def __enter__(self) -> "PtyLink":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the pty -----------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw: no echo, no CR/LF translation, no line buffering; the frames are binary.
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        # Holding the slave open ourselves keeps the master readable while no SFE has it open.
        self.slave_path = os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            try:
                if tmp.is_symlink() or tmp.exists():
                    tmp.unlink()
                os.symlink(self.slave_path, tmp)
                os.replace(tmp, self.link)  # atomic: an SFE never sees the link missing
            except OSError:
                self._close_pty()
                raise

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()

    # -- the loop ----------------------------------------------------------------------------
    def _read(self, timeout: float) -> bytes | None:
        self.rounds += 1
        master = self._master
        if master is None:
            return None
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(master, 4096)
        except BlockingIOError:
            return b""
        except OSError:
            return None

    def _write(self, data: bytes) -> None:
        master = self._master
        if master is None:
            return
        try:
            os.write(master, data)
        except (BlockingIOError, OSError):
            # Nobody reads the slave and its buffer is full: bytes are lost, as on a UART.
            pass

    def _run(self) -> None:
        faults = self.engine.faults
        while not self._stop.is_set():
            pump(self.engine, self._read, self._write, self._stop)
            if self._stop.is_set():
                break
            self._close_pty()
            # Unplugged: stay away until replugged. Otherwise the pty failed under us (it
            # should not while we hold the slave): come back on a fresh one, like a re-plug.
            while faults.is_unplugged() and not self._stop.wait(POLL_INTERVAL):
                pass
            if not self._stop.is_set():
                self._open_pty()
