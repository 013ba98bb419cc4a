"""The sealing process: delegated seals committed by a second process, beside the API's.

Why a process: the daemon is CPU-bound in Python under load, and one process runs Python on one
core at a time (the GIL). Parsing HTTP, validating and computing taxes (the API) and signing,
hashing and committing (the journal writer) then take turns on one core, and every system call
of one hands the interpreter to the other. With the writer in its own process, the two halves run
on two cores.

What stays the same: the sealing code is the journal's own (`Journal.seal_batch`: group
commit, exactly-once per request_id, numbers, chain, credential changes, all read and written
inside the SQLite transaction), so it is as safe beside the daemon's in-process writer as two
transactions are; SQLite's write lock serializes them. The in-process writer keeps every other
write (drafts, device and cloud records, reports, retention).

The wire: a Unix socket pair, frames of `4-byte length + pickle`. The parent sends one frame per
job (request, fingerprint, lines, totals and their encoded fragments); the child takes every job
waiting (up to max_batch), seals and commits them as one batch, and answers with one frame.
Pickle is safe here: both ends are this program, started by it, over a socket nobody else holds.

On demand: the child is started when sales overlap (a delegated seal arrives while another is
still being sealed; those and the next few, until the child reports ready, are sealed in-process
as before) and stops after `idle_seconds` without a seal, so an idle shop box, or one cashier at a
time, runs one process: its memory stays the single process's and no sale waits for a start.

Failure: if the child dies, the jobs it had not answered are handed to the in-process writer,
which answers each exactly once: the stored invoice if the child had committed it, a new seal
otherwise. Sales never stop; the child is started again by a later seal, after a growing delay.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .errors import AgentError, IdempotencyConflict, InvalidInvoice, SealingBlocked, StorageFailure
from .journal import BatchResult, Journal, SealJob, SealOutcome

log = logging.getLogger("stalela.sealer")

_LEN = struct.Struct(">I")
_ERRORS = {cls.__name__: cls for cls in (IdempotencyConflict, InvalidInvoice, SealingBlocked, StorageFailure)}
READY = "ready"


def _frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(payload)) + payload


def _split_frames(buffer: bytearray) -> list[Any]:
    """Remove and return every complete frame at the start of `buffer`."""
    out = []
    offset = 0
    while len(buffer) - offset >= 4:
        (size,) = _LEN.unpack_from(buffer, offset)
        if len(buffer) - offset - 4 < size:
            break
        out.append(pickle.loads(bytes(buffer[offset + 4:offset + 4 + size])))
        offset += 4 + size
    del buffer[:offset]
    return out


def _error_to_wire(exc: BaseException) -> tuple[str, str, dict]:
    if isinstance(exc, AgentError) and type(exc).__name__ in _ERRORS:
        return type(exc).__name__, exc.detail, dict(exc.extra)
    return "StorageFailure", f"the sealing process failed: {exc}", {}


def _error_from_wire(name: str, detail: str, extra: dict) -> AgentError:
    cls = _ERRORS.get(name, StorageFailure)
    if cls is SealingBlocked:
        extra = dict(extra)
        return SealingBlocked(detail, reason=str(extra.pop("reason", "blocked")), **extra)
    return cls(detail, **extra)


# ---------------------------------------------------------------------------------- parent side
class _Link(asyncio.Protocol):
    """The parent's end of the socket pair: hands each whole frame to `on_message`, and itself to
    `on_lost` when the connection ends (the owner's callbacks, given at construction)."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[["_Link"], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in _split_frames(self.buffer):
            self.on_message(message)

    def connection_lost(self, exc) -> None:
        self.on_lost(self)


class SealerProcess:
    """The parent's handle on the sealing process. `submit_async` is Journal.submit_async's twin."""

    def __init__(self, data_dir: Path, journal: Journal, *, log_level: str = "INFO", idle_seconds: float = 300.0,
                 restart_delays: tuple[float, ...] = (1, 2, 5, 15, 60)) -> None:
        self.data_dir = Path(data_dir)
        self.journal = journal
        self.log_level = log_level
        self.idle_seconds = idle_seconds
        self.restart_delays = restart_delays
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self._link: _Link | None = None
        self._waiting: dict[int, tuple[asyncio.Future, SealJob]] = {}
        self._next_id = 0
        self._failures = 0
        self._closed = False  # stop() was called: the daemon is shutting down
        self._not_before = 0.0  # after a crash, no new start before this (monotonic) time
        self._last_seal = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._starting = False
        self._in_process = 0  # seals in flight on the daemon's own writer

    def _in_process_done(self, _future) -> None:
        self._in_process -= 1

    @property
    def state(self) -> str:
        """For /v1/health: "ready", "starting" or "stopped" (started by the next seal)."""
        if self.ready:
            return "ready"
        return "starting" if self._link is not None or self._starting else "stopped"

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Spawn the child and return at once; seals stay in-process until it reports ready."""
        if self._closed or self._link is not None:
            self._starting = False
            return
        self._starting = True
        try:
            await self._spawn()
        finally:
            self._starting = False

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.sealer", "--data", str(self.data_dir), "--fd", str(child.fileno()),
                 "--log-level", self.log_level],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=_child_env())
        except OSError as exc:
            parent.close()
            self._not_before = time.monotonic() + 60
            log.warning("sealing process not started; sealing in-process",
                        extra={"event": "sealer.not_started", "error": str(exc)})
            return
        finally:
            child.close()
        _, self._link = await loop.create_connection(lambda: _Link(self._answer, self._lost), sock=parent)
        self._last_seal = time.monotonic()
        self._schedule_idle_check()
        log.info("sealing process starting", extra={"event": "sealer.starting", "pid": self.proc.pid})

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the child finish its batch and exit (it stops at end of input), then reap it."""
        self._closed = True
        await self._stop_child(timeout)

    async def _stop_child(self, timeout: float = 10.0) -> None:
        self.ready = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()  # the child sees the end of its input and exits
        if self.proc is not None:
            proc = self.proc
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _schedule_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(max(1.0, self.idle_seconds / 4), self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._link is None:
            return
        if time.monotonic() - self._last_seal >= self.idle_seconds and not self._waiting:
            log.info("sealing process stopping: no sale for a while",
                     extra={"event": "sealer.idle_stop", "idle_s": round(time.monotonic() - self._last_seal)})
            asyncio.get_running_loop().create_task(self._stop_child())
        else:
            self._schedule_idle_check()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    # -------------------------------------------------------------- sealing
    def submit_async(self, job: SealJob) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        self._last_seal = time.monotonic()
        if not self.ready or self._link is None or self._link.transport is None:
            if (self._in_process and self._link is None and not self._starting and not self._closed
                    and self._last_seal >= self._not_before):
                # Sales overlap (this one arrives while another is being sealed): that is when a
                # second core pays. One cashier at a time never needs it, and never waits for it.
                self._starting = True  # one child at a time, however many sales arrive meanwhile
                loop.create_task(self.start())
            inner = self.journal.submit_async(job)
            self._in_process += 1
            inner.add_done_callback(self._in_process_done)
            return inner
        waiter = loop.create_future()
        self._next_id += 1
        self._waiting[self._next_id] = (waiter, job)
        self._link.transport.write(_frame((self._next_id, job.request, job.fingerprint, job.lines, job.totals,
                                           job.fragments)))
        return waiter

    def _answer(self, message: Any) -> None:
        kind = message[0]
        if kind == READY:
            self.ready = True
            self._failures = 0
            log.info("sealing process ready", extra={"event": "sealer.ready", "pid": self.pid})
            return
        _, results, numbers_left, clock_skew, created = message
        self.journal.count_remote(BatchResult(created=created, numbers_left=numbers_left,
                                              clock_skew=max(self.journal.last_clock_skew, clock_skew)))
        for job_id, ok, payload in results:
            entry = self._waiting.pop(job_id, None)
            if entry is None or entry[0].done():
                continue  # the caller went away; the seal stands
            waiter = entry[0]
            if ok:
                created_, body_json, invoice = payload
                waiter.set_result(SealOutcome(invoice, created=created_, body_json=body_json,
                                              status="sealed" if body_json is not None else None,
                                              mode="delegated" if body_json is not None else None))
            else:
                waiter.set_exception(_error_from_wire(*payload))

    def _lost(self, link: _Link) -> None:
        if link is not self._link:
            return
        expected = self._closed or self._idle_timer is None and not self.ready
        self.ready = False
        self._link = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        code = self.proc.poll() if self.proc is not None else None
        orphans = list(self._waiting.values())
        self._waiting.clear()
        # Each unanswered job goes to the in-process writer: it answers exactly once (the stored
        # invoice if the child committed it before dying, a new seal otherwise).
        for waiter, job in orphans:
            if waiter.done():
                continue
            job.waiter = None
            inner = self.journal.submit_async(job)
            inner.add_done_callback(lambda f, w=waiter: _relay(f, w))
        if expected and not orphans:
            return
        delay = self.restart_delays[min(self._failures, len(self.restart_delays) - 1)]
        self._failures += 1
        self._not_before = time.monotonic() + delay
        log.error("sealing process stopped; sealing in-process until it is back",
                  extra={"event": "sealer.stopped", "exit_code": code, "handed_over": len(orphans),
                         "restart_after_s": delay})
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # it closed the link without exiting: do not leave it behind


def _relay(inner: asyncio.Future, outer: asyncio.Future) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())
    else:
        outer.set_result(inner.result())


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ----------------------------------------------------------------------------------- child side
def _serve(sock: socket.socket, journal: Journal, max_batch: int) -> None:
    buffer = bytearray()
    pending: list[Any] = []
    sock.sendall(_frame((READY,)))
    while True:
        if not pending:
            data = sock.recv(1 << 20)  # blocks while idle
            if not data:
                return  # the daemon closed the link (stop) or died: nothing is left to answer
            buffer += data
        # Take whatever else has arrived too: the bigger the batch, the fewer fsyncs.
        while True:
            try:
                more = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not more:
                break
            buffer += more
        pending += _split_frames(buffer)
        if not pending:
            continue
        batch, pending = pending[:max_batch], pending[max_batch:]
        jobs = [SealJob(request=m[1], fingerprint=m[2], lines=m[3], totals=m[4], fragments=m[5]) for m in batch]
        done = journal.seal_batch(jobs)
        results = []
        for message, job in zip(batch, jobs):
            exc = job.future.exception()
            if exc is not None:
                results.append((message[0], False, _error_to_wire(exc)))
                continue
            outcome = job.future.result()
            body = outcome.body_json
            results.append((message[0], True, (outcome.created, body, None if body is not None else outcome.invoice)))
        sock.sendall(_frame(("sealed", results, done.numbers_left, done.clock_skew, done.created)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.sealer", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    from . import logs
    from .config import load_config, zone
    from fiscal.signing import load_private_key
    from .identity import OutletIdentity

    logs.setup(args.log_level)
    # Stopping is the daemon's call: it closes the link and this process exits after its batch.
    # (Ctrl-C in a terminal and systemd's SIGTERM reach the whole group; a batch is never cut.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    config = load_config(args.data)
    identity = OutletIdentity.load(config.enrollment_path)
    journal = Journal(config.db_path, identity, load_private_key(config.key_path),
                      zone(config.time_zone or identity.time_zone), isf=config.isf, max_batch=config.max_batch)
    try:
        journal.warm_up()
        _serve(sock, journal, config.max_batch)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon went away; every committed seal is in the journal
    finally:
        journal.close()  # never started here: closes its connections
    return 0


if __name__ == "__main__":
    sys.exit(main())
