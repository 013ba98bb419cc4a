"""The verifier: worker processes that run reconciliation's pure checks (checks.py) in parallel.

Why processes: per invoice, the checks that need no database cost ≈ 180–220 µs of CPU-bound
Python when textpath.py recognises an agent's text (Ed25519 verification ≈ 50 µs, the tax
engine's recomputation ≈ 60, the text path's expression ≈ 20, the three forms and two SHA-256
≈ 25, the seal message and codes ≈ 12: bench/NOTES.md, PostgreSQL section), more for a text it does
not recognise (parsed and validated in full), against ≈ 60 µs for the checks against the
ledger; threads would share one GIL.
So a batch is cut into chunks that workers check while the service's own process runs the
sequential checks (reconcile.py) on the chunks already answered, in batch order, inside the
batch's transaction: the two stages overlap.

* The workers are started with the service, from a **forkserver** (the service's process runs
  threads; forking it could copy a lock some thread holds), and warmed up (imports, compiled
  validators, a signature check) before the service answers anything.
* **Cheap IPC**: one socketpair per worker, two chunks in flight per worker. A chunk goes as the JSON
  text of its invoices (bytes; for an agent's upload, slices of the request body itself, never
  parsed nor encoded by the service) with the signer keys it needs; the answer is one compact
  `Checked` tuple per invoice (marshal): the stored canonical text and hashes, not a dict.
* A small **pump thread** per batch keeps every worker busy: a worker always holds its next
  chunk (the pump sends another as soon as it answers one), while the caller works through the
  answers in order. Handing a chunk over only when a worker asked for it left each worker idle
  ≈ 20 % of the time: the service process is busy too, and the pump waits for a CPU.
* **Failure**: a worker that dies (end of file, broken pipe) or does not answer within `timeout` is
  reported in one warning line (`verifier.worker_lost`), its chunks are checked in the service's
  own process, the other workers go on, and the worker is replaced when the batch ends. The
  checks are pure, so a lost or repeated chunk can neither lose nor double anything.
"""
from __future__ import annotations

import gc
import logging
import marshal
import multiprocessing
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, Iterator, Mapping

from . import checks
from .checks import Checked
from .logs import event

_PRELOAD = ["cloud_stub.checks"]  # imported once by the forkserver, inherited by every worker
RETRY_SECONDS = 10.0  # after a worker failed to start, the batches run without it this long
IN_FLIGHT = 2  # chunks handed to a worker ahead: the next one is there when it finishes one


class UnreadableChunk(Exception):
    """A chunk that is not a JSON array: the body was cut where it should not have been."""


def default_size() -> int:
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- the transport -----------------------------------------------------------------------------
#
# Messages over a socketpair: an 8-byte length, then the bytes. Each direction moves a whole
# message in one system call with the GIL released (`sendmsg`; `recv_into` with MSG_WAITALL).
# multiprocessing's Connection reads a large message in several partial reads, and after each
# the reading thread must win the GIL back from a busy thread (up to the 5 ms switch interval):
# a 0.5 MB chunk then took ≈ 15 ms to hand over, and the workers starved.

_HEADER = struct.Struct("!Q")


def _send(sock: socket.socket, data: bytes) -> None:
    header = _HEADER.pack(len(data))
    sent = sock.sendmsg([header, data])  # a blocking stream socket takes it all, normally
    if sent < len(header) + len(data):
        sock.sendall((header + data)[sent:])


def _recv(sock: socket.socket) -> bytearray:
    """One message; EOFError when the other side has closed its end (or died)."""
    header = _recv_exactly(sock, _HEADER.size)
    return _recv_exactly(sock, _HEADER.unpack(header)[0])


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
        if n == 0:
            raise EOFError("the other end closed the socket")
        got += n
    return buffer


# -- the worker process ------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    """A worker's life: answer chunks until the service closes its socket (or dies).

    The service keeps two chunks in flight per worker, so the worker never waits for its next
    one; a reader and a writer thread move the bytes while this thread checks invoices, so it
    never waits on the socket either, and neither side can block the other for good (each side
    always drains what the other sends).
    """
    # Ctrl-C reaches the whole process group: the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    checks.warm_up()
    # The cyclic collector would rescan a parsed chunk (≈300 containers per invoice) again and
    # again while the checks allocate. The checks make no cycles (reference counting frees
    # everything), so it runs once per chunk instead, over what is left; what was imported at
    # start-up is frozen out of its passes.
    gc.disable()
    gc.freeze()
    inbox: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    threading.Thread(target=_read_into, args=(sock, inbox), name="read", daemon=True).start()
    threading.Thread(target=_write_from, args=(sock, outbox), name="write", daemon=True).start()
    loaded: dict[str, Any] = {}  # agent key text -> loaded key
    while (message := inbox.get()) is not None:  # None: the service closed its socket, or died
        outbox.put(_answer(message, loaded))
        del message
        gc.collect()


def _answer(message: bytearray, loaded: dict[str, Any]) -> bytes:
    try:
        keys, payload = marshal.loads(message)
        if payload is None:
            return marshal.dumps(("ready", os.getpid()))
        records = checks.check_text(payload, keys, loaded)
        return marshal.dumps(("ok", records) if records is not None else ("unreadable", None))
    except Exception as exc:  # a bug: the service checks this chunk itself and meets it there
        return marshal.dumps(("failed", type(exc).__name__))


def _read_into(sock: socket.socket, inbox: queue.SimpleQueue) -> None:
    try:
        while True:
            inbox.put(_recv(sock))
    except (EOFError, OSError):
        inbox.put(None)


def _write_from(sock: socket.socket, outbox: queue.SimpleQueue) -> None:
    try:
        while (data := outbox.get()) is not None:
            _send(sock, data)
    except OSError:  # the service is gone: the reader sees it too
        pass


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, sock: socket.socket):
        self.process = process
        self.sock = sock

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self.sock.close()  # the worker reads EOF and returns
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)


# -- the pool ----------------------------------------------------------------------------------


class VerifierPool:
    """`size` warmed worker processes; one batch uses them at a time (`checking`)."""

    def __init__(self, size: int, timeout: float = 60.0):
        if size < 1:
            raise ValueError("a verifier pool needs at least one worker")
        self.size = size
        self.timeout = timeout  # how long a chunk may take before its worker counts as lost
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)
        self._lock = threading.Lock()  # one batch at a time owns the workers
        self._workers: list[_Worker | None] = [None] * size
        self._loaded: dict[str, Any] = {}  # the service's own key cache, for chunks checked here
        self.lost = 0  # workers lost since the start (they were replaced)
        self.batches = 0  # batches checked with the workers since the start
        self.chunks_here = 0  # chunks checked in the service process instead (lost or failed)
        self._closed = False
        self._retry_at = 0.0  # after a failed start, when to try again (monotonic clock)

    def start(self) -> "VerifierPool":
        started = time.perf_counter()
        with self._lock:
            self._replace(range(self.size))
        event("verifier.ready", workers=self.size, pids=self.pids(),
              ms=round((time.perf_counter() - started) * 1000))
        return self

    def pids(self) -> list[int | None]:
        return [w.pid if w is not None else None for w in self._workers]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for i, worker in enumerate(self._workers):
                if worker is not None:
                    worker.stop()
                    self._workers[i] = None

    @contextmanager
    def checking(self, payloads: list[bytes], keys: Mapping[str, str]) -> Iterator[Iterator[list[Checked]]]:
        """Check chunks (JSON array texts) with the workers; yields an iterator of their
        `Checked` records, chunk by chunk in order. The work starts on entry, so the caller can
        wait for its transaction meanwhile.

        Raises UnreadableChunk (from the iterator) for a chunk that is not a JSON array.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the verifier pool is closed")
            dead = [i for i, w in enumerate(self._workers) if w is None or not w.alive()]
            if dead and time.monotonic() >= self._retry_at:
                # Died between batches (killed, out of memory...): replace before use.
                for i in dead:
                    self._report_lost(self._workers[i], "between batches")
                self._replace(dead)
            run = _Run(self, payloads, dict(keys))
            self.batches += 1
            try:
                run.start()
                yield run.results()
            finally:
                lost = run.finish()
                if lost:
                    self._replace(lost)

    # -- internals --

    def _replace(self, indexes) -> None:
        """Start fresh workers at these places (stopping what is left of the old ones), warmed.

        A worker that cannot start leaves its place empty (logged): the batches use the others,
        or none, and a batch at least `RETRY_SECONDS` later tries again.
        """
        fresh: list[tuple[int, _Worker]] = []
        for i in indexes:
            old = self._workers[i]
            self._workers[i] = None
            if old is not None:
                old.stop(timeout=0.5)
            try:
                parent, child = socket.socketpair()
                process = self._ctx.Process(target=_serve, args=(child,), name=f"stalela-verifier-{i}",
                                            daemon=True)
                process.start()
                child.close()  # only the worker holds its end: it reads EOF if the service dies
                worker = _Worker(process, parent)
                _send(worker.sock, marshal.dumps(({}, None)))  # its warm-up starts now
            except OSError as exc:
                event("verifier.start_failed", level=logging.ERROR, place=i, error=f"{type(exc).__name__}: {exc}")
                continue
            fresh.append((i, worker))
        for i, worker in fresh:
            try:
                if not wait([worker.sock], max(self.timeout, 30.0)):
                    raise TimeoutError("no answer to the warm-up")
                kind, _ = marshal.loads(_recv(worker.sock))
                if kind != "ready":
                    raise RuntimeError(f"answered {kind!r} to the warm-up")
            except (OSError, EOFError, RuntimeError, ValueError) as exc:
                event("verifier.start_failed", level=logging.ERROR, place=i, error=f"{type(exc).__name__}: {exc}")
                worker.stop(timeout=0.5)
                continue
            self._workers[i] = worker
        if any(w is None for w in self._workers):
            self._retry_at = time.monotonic() + RETRY_SECONDS

    def _report_lost(self, worker: _Worker | None, when: str) -> None:
        if worker is None:
            return
        self.lost += 1
        worker.process.join(0.1)
        action = ("replaced before the batch" if when == "between batches"
                  else "its chunks are checked in the service process; replaced after the batch")
        event("verifier.worker_lost", level=logging.WARNING, pid=worker.pid, exitcode=worker.process.exitcode,
              when=when, action=action)

    def check_here(self, payload: bytes, keys: Mapping[str, str]) -> list[Checked]:
        """A chunk checked in the service's own process (no worker, or its worker was lost)."""
        self.chunks_here += 1
        records = checks.check_text(payload, keys, self._loaded)
        if records is None:
            raise UnreadableChunk("a chunk of the batch is not a JSON array")
        return [Checked(*r) for r in records]


class _Run:
    """One batch on the pool: a pump thread feeding the workers, results consumed in order."""

    def __init__(self, pool: VerifierPool, payloads: list[bytes], keys: dict[str, str]):
        self.pool = pool
        self.payloads = payloads
        self.keys = keys
        self.messages: list[bytes | None] = [marshal.dumps((keys, p)) for p in payloads]
        self.answers: queue.SimpleQueue[tuple[int, bytearray | None]] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.lost: list[int] = []  # places of the workers lost during this batch
        self.thread = threading.Thread(target=self._pump, name="verifier-pump", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> list[int]:
        """Stop handing out chunks, let the workers finish the ones they have, return the lost."""
        self.stop.set()
        self.thread.join()
        return self.lost

    def results(self) -> Iterator[list[Checked]]:
        early: dict[int, bytearray | None] = {}
        for index in range(len(self.payloads)):
            while index not in early:
                got, data = self.answers.get()
                early[got] = data
            data = early.pop(index)
            self.messages[index] = None  # sent: let the copy go
            answer = marshal.loads(data) if data is not None else ("lost", None)
            kind, body = answer
            if kind == "ok":
                yield [Checked(*r) for r in body]
            elif kind == "unreadable":
                raise UnreadableChunk("a chunk of the batch is not a JSON array")
            else:  # lost with its worker, or failed in it: check it here, meet any error here
                yield self.pool.check_here(self.payloads[index], self.keys)

    def _pump(self) -> None:
        workers = [(i, w) for i, w in enumerate(self.pool._workers) if w is not None]
        # socket -> (place, worker, chunks in flight, oldest first: a worker answers in order)
        busy: dict[socket.socket, tuple[int, _Worker, deque[int]]] = {}
        following = 0  # the next chunk to hand out

        def hand_out(place: int, worker: _Worker, flight: deque[int]) -> None:
            """Keep IN_FLIGHT chunks with the worker (while there are chunks left)."""
            nonlocal following
            while len(flight) < IN_FLIGHT and following < len(self.messages) and not self.stop.is_set():
                index, following = following, following + 1
                flight.append(index)
                try:
                    _send(worker.sock, self.messages[index])
                except OSError:  # the worker is gone: its chunks are checked here
                    self._lose(place, worker, flight, "sending a chunk")
                    return
            if flight:
                busy[worker.sock] = (place, worker, flight)

        for place, worker in workers:
            hand_out(place, worker, deque())
        while busy:
            ready = wait(list(busy), timeout=self.pool.timeout)
            if not ready:  # nobody answered in time: count them all as lost
                for place, worker, flight in list(busy.values()):
                    worker.process.kill()
                    self._lose(place, worker, flight, "no answer in time")
                busy.clear()
                break
            for sock in ready:
                place, worker, flight = busy.pop(sock)
                try:
                    data = _recv(sock)
                except (EOFError, OSError):
                    self._lose(place, worker, flight, "waiting for an answer")
                    continue
                self.answers.put((flight.popleft(), data))
                hand_out(place, worker, flight)
        # Chunks no worker took (all lost, or the batch stopped early): checked here if needed.
        for index in range(following, len(self.messages)):
            self.answers.put((index, None))

    def _lose(self, place: int, worker: _Worker, flight: deque[int], when: str) -> None:
        self.lost.append(place)
        self.pool._report_lost(worker, when)
        for index in flight:
            self.answers.put((index, None))
        flight.clear()
