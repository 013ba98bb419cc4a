"""Running an engine on a byte stream (the pty and TCP links share this loop)."""
from __future__ import annotations

import threading
import time
from typing import Callable

from .engine import MCFEngine

POLL_INTERVAL = 0.05  # how often an idle link checks for stop, unplug and half frames

# read(timeout) -> bytes (b"" when nothing came in time) or None when the stream has ended.
Reader = Callable[[float], "bytes | None"]
Writer = Callable[[bytes], None]


def pump(engine: MCFEngine, read: Reader, write: Writer, stop: threading.Event) -> None:
    """Answer what arrives until ``stop`` is set, the stream ends or the link is unplugged."""
    while not stop.is_set() and not engine.faults.is_unplugged():
        chunk = read(POLL_INTERVAL)
        if chunk is None:
            return
        arrived = time.monotonic()
        emissions = engine.respond(chunk) if chunk else engine.poll()
        for emission in emissions:
            wait = arrived + emission.at - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            write(emission.data)
