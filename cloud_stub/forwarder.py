"""The DGI forwarder: every sealed invoice of the ledger to the DGI's e-MCF, once.

One queue per outlet, worked in ledger order by whichever cloud instance holds the outlet's
lease (forwarding.py); outlets are worked concurrently (`dgi_concurrency` per instance).
For each entry:

* device-sealed: the MCF reports to the DGI itself, so the entry is only marked
  `device_reported`;
* otherwise phase 1 (`POST /api/invoice`); the DGI's totals must equal the ledger's, or the
  request is cancelled and the entry quarantined; `uid` is committed (`submitted`) *before*
  the confirm is sent; then `PUT .../confirm` and the answer is recorded as a `normalized`
  event beside the ledger entry.

Look-ahead: while an entry (the head) is confirmed, the next entry's phase 1 goes out beside it
(`_look_ahead`); only a good answer is recorded (`submitted`, under the lease), and that entry,
once the head, is confirmed at once. Any other answer is left for the entry to meet again as the
head; a look-ahead uid still unconfirmed when the worker stops is forgotten (`forget_ahead`: the
request becomes a stray). Only the head is confirmed and only the head advances the queue, so
order and exactly-once are the head's, and an outlet holds at most two pending requests.

A confirm whose answer never came (a lost answer, a timeout, the cloud killed mid-call) leaves
the entry `submitted`: the next attempt first asks the DGI about that `uid` (or, without that
lookup, looks for it in the pending list) and records what it says instead of normalizing the
invoice a second time. When an instance takes an outlet up, pending requests it does not know
(phase 1 answered, the process died before `uid` was committed) are cancelled: they were never
confirmed, and they count against the DGI's 10 pending requests.

Failures of service (network, 5xx, 429, the pending limit, a token the DGI refuses) back the
outlet off (`not_before`: Retry-After when the DGI gives one, otherwise exponential with
jitter) with nothing lost; a refusal of the invoice itself (any other `errorCode` in phase 1)
quarantines the entry for an operator (`stalela cloud dgi release`) and the queue goes on.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
from aiohttp.payload import BytesPayload
from multidict import CIMultiDict

from . import forwarding
from .config import CloudConfig
from .dgi_body import as_amount, emcf_request, our_totals
from .forwarding import Work
from .logs import event, log

BACKOFF_BASE = 0.5  # seconds; doubles with each consecutive failure of an outlet, up to the cap
RETRY_MARGIN = 0.05  # seconds added to the DGI's Retry-After
READ_AHEAD = 20  # entries of an outlet read in one transaction (at most a slice's worth is used)
TOKEN_BACKOFF = 60.0  # a token the DGI refuses needs an operator: look again only now and then


class Transient(Exception):
    """The DGI could not take the call now: back the outlet off (`delay`: what the DGI asked)."""

    def __init__(self, message: str, delay: float | None = None):
        super().__init__(message)
        self.delay = delay


class Refused(Exception):
    """The DGI refused the call itself: `{errorCode, errorDesc}`."""

    def __init__(self, code: str, desc: str, status: int):
        super().__init__(f"{code}: {desc}")
        self.code = code
        self.desc = desc
        self.status = status


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def load_tokens(path: Path) -> dict[str, str]:
    """{outlet id: e-MCF token}; refused if others can read the file (they are secrets)."""
    if not path.exists():
        return {}
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    data = json.loads(path.read_text(encoding="utf-8") or "{}")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path} must be a JSON object of outlet id -> token")
    return data


def save_token(path: Path, outlet_id: str, token: str | None) -> None:
    """Set (or, with None, remove) one outlet's token; the file stays mode 0600."""
    tokens = load_tokens(path)
    if token is None:
        tokens.pop(outlet_id, None)
    else:
        tokens[outlet_id] = token
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(tokens, indent=2, sort_keys=True).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DgiClient:
    """The e-MCF API for one outlet's point of sale (its token), with an optional pace."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, rate: float, timeout: float):
        self.session = session
        self.base = base_url.rstrip("/")
        # A CIMultiDict already: aiohttp copies it as it is instead of converting a dict per call.
        self.headers = CIMultiDict({"Authorization": f"Bearer {token}"})
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._next_at = 0.0
        self._hold_until = 0.0  # monotonic: the DGI's Retry-After, for every call of this point of sale

    async def call(self, method: str, path: str, body: Any = None) -> dict:
        # The outlet has two calls in flight at times (the look-ahead): a Retry-After one of them
        # received holds the other's next call too, and each call takes its own slot of the pace
        # before it sleeps (two callers never wake for the same slot).
        hold = self._hold_until - time.monotonic()
        if hold > 0:
            raise Transient("the DGI asked to wait (Retry-After)", hold)
        if self.interval:
            now = time.monotonic()
            at = max(now, self._next_at)
            self._next_at = at + self.interval
            if at > now:
                await asyncio.sleep(at - now)
        try:
            return await self._call(method, path, body)
        except Transient as exc:
            if exc.delay is not None and exc.delay > 0:
                self._hold_until = max(self._hold_until, time.monotonic() + exc.delay)
            raise

    async def _call(self, method: str, path: str, body: Any) -> dict:
        try:
            # orjson both ways: a few µs per call instead of tens (json), on the loop of every outlet.
            # The body as a payload with its Content-Type: aiohttp takes it as it is, without
            # looking up which payload class fits bytes (per call).
            payload = None if body is None else BytesPayload(orjson.dumps(body), content_type="application/json")
            async with self.session.request(method, self.base + path, data=payload, headers=self.headers,
                                            timeout=self.timeout) as resp:
                raw = await resp.read()
                status, after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Transient(f"no answer from the DGI ({type(exc).__name__})") from None
        if status == 429:
            raise Transient("the DGI asks to slow down (429)", retry_after(after))
        if status >= 500:
            raise Transient(f"the DGI answered HTTP {status}", retry_after(after))
        try:
            data = orjson.loads(raw)
        except ValueError:  # orjson.JSONDecodeError, also for bytes that are not UTF-8
            raise Transient(f"the DGI answered HTTP {status} without JSON") from None
        if isinstance(data, dict) and "errorCode" in data:
            code, desc = str(data.get("errorCode")), str(data.get("errorDesc") or "")
            if status == 401 or code.startswith("TOKEN"):
                raise Transient(f"the DGI refuses the outlet's token ({code}): renew it with "
                                "`stalela cloud dgi token`", TOKEN_BACKOFF)
            if code in ("PENDING_LIMIT", "RATE_LIMIT"):
                raise Transient(f"the DGI asks to slow down ({code})", retry_after(after))
            raise Refused(code, desc, status)
        if status >= 400 or not isinstance(data, dict):
            raise Transient(f"the DGI answered HTTP {status} with an unexpected body")
        return data


class Recorder:
    """Group commit of the outlets' recordings (forwarding.record_together).

    An outlet's coroutine hands its recording over and waits for the commit; while one group is
    being committed the next gathers, and goes as one transaction as soon as that commit ends.
    One outlet alone pays what it paid before (one transaction); a hundred outlets pay one
    commit, and one fsync on SQLite, for all their recordings waiting at that moment instead
    of one each. A recording is answered only after its commit: `uid` is still durable before
    the confirm leaves."""

    def __init__(self, service):
        self.service = service
        self._waiting: list[tuple[Any, tuple, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def __call__(self, fn: Any, *args: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((fn, args, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._commit_waiting())
        return await future

    async def _commit_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                results = await self.service.call(forwarding.record_together, self.service.store,
                                                  [(fn, args) for fn, args, _ in group])
            except BaseException as exc:  # the single recording's own error, or the store's
                results = [(False, exc)] * len(group)
                if not isinstance(exc, Exception):
                    for _, _, future in group:
                        if not future.done():
                            future.cancel()
                    raise
            for (_, _, future), (ok, value) in zip(group, results):
                if future.done():  # its outlet was cancelled meanwhile (shutdown)
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


class Forwarder:
    """The forwarding loop of one cloud instance (started by server.py when a DGI URL is set)."""

    def __init__(self, service, config: CloudConfig):
        self.service = service
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.active: dict[str, asyncio.Task] = {}
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tokens: dict[str, str] = {}
        self._tokens_stamp: tuple[int, int] | None = None
        self._renewed: set[str] = set()  # outlets whose token changed since the last round
        self._loaded = False
        self._session: aiohttp.ClientSession | None = None
        self.record = Recorder(service)

    async def db(self, fn, *args: Any) -> Any:
        return await self.service.call(fn, self.service.store, *args)

    def now(self):
        return self.service.now()

    def tokens(self) -> dict[str, str]:
        """The token file, read again whenever it changes (a renewed token needs no restart)."""
        path = self.config.dgi_tokens_path
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._tokens_stamp:
            try:
                tokens = load_tokens(path)
            except (OSError, ValueError) as exc:
                log.error("dgi.tokens_unreadable", extra={"fields": {"error": str(exc)}})
            else:
                if self._loaded:  # at start, back-offs (a Retry-After) still hold
                    self._renewed |= {o for o, t in tokens.items() if self._tokens.get(o) != t}
                self._tokens, self._loaded = tokens, True
            self._tokens_stamp = stamp
        return self._tokens

    async def run(self) -> None:
        limit = max(1, self.config.dgi_concurrency)
        # No cookie jar: the DGI authenticates each outlet by its bearer token, and a cookie one
        # outlet's call received must not ride along with another's (nor cost every call a jar
        # lookup and update).
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit * 2),
                                              cookie_jar=aiohttp.DummyCookieJar())
        event("dgi.forwarder_started", url=self.config.dgi_url, owner=self.owner)
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    await self._round(limit)
                    failing = False
                except Exception:
                    if not failing:
                        log.error("dgi.round_failed", exc_info=True)
                    failing = True
                try:  # the next round: after dgi_poll, or as soon as an outlet's worker ends
                    await asyncio.wait_for(self._wake.wait(), self.config.dgi_poll)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            for task in list(self.active.values()):
                task.cancel()
            await asyncio.gather(*self.active.values(), return_exceptions=True)
            await self._session.close()

    async def _round(self, limit: int) -> None:
        tokens = self.tokens()
        await self.db(forwarding.add_queues, self.now())
        if self._renewed:
            await self.db(forwarding.clear_back_off, sorted(self._renewed), self.now())
            self._renewed = set()
        free = limit - len(self.active)
        candidates = [o for o in sorted(tokens) if o not in self.active]
        claimed = await self.db(forwarding.claim, self.owner, candidates, self.now(), self.config.dgi_lease, free)
        for outlet_id in claimed:
            task = asyncio.create_task(self._outlet(outlet_id, tokens[outlet_id]))
            self.active[outlet_id] = task
            task.add_done_callback(lambda _t, o=outlet_id: self._ended(o))

    def _ended(self, outlet_id: str) -> None:
        self.active.pop(outlet_id, None)
        self._wake.set()  # a free place: claim the next outlet now rather than at the next poll

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- one outlet -------------------------------------------------------------------------

    async def _outlet(self, outlet_id: str, token: str) -> None:
        assert self._session is not None
        client = DgiClient(self._session, self.config.dgi_url or "", token, self.config.dgi_rate,
                           self.config.dgi_timeout)
        work: Work | None = None
        held: Work | None = None  # the look-ahead entry whose uid is kept and whose confirm is not sent
        try:
            await self._cancel_strays(outlet_id, client)
            renewed = time.monotonic()
            ahead: list[Work] = []
            # A slice of entries, then the outlet goes back to the queue (behind the outlets that
            # waited longest): with more outlets than `dgi_concurrency`, all of them move on.
            turns = max(1, self.config.dgi_slice)
            for turn in range(turns):
                if self._stop.is_set():
                    return
                if not ahead:
                    ahead = await self.db(forwarding.next_works, outlet_id, READ_AHEAD)
                    if not ahead:
                        return
                work = ahead.pop(0)
                if held is not None and held.seq == work.seq:
                    held = None  # the head now: its confirm may leave from here on
                # Renewed when a third of it is gone, not per entry: one write less per invoice
                # (each recording is fenced by the lease anyway).
                if time.monotonic() - renewed > self.config.dgi_lease.total_seconds() / 3:
                    if not await self.db(forwarding.renew, outlet_id, self.owner, self.now(), self.config.dgi_lease):
                        return  # another instance took the outlet over
                    renewed = time.monotonic()
                # The look-ahead: phase 1 of the next entry goes out while this one is confirmed
                # (the DGI allows 10 pending requests per point of sale; we hold at most two).
                # Not on the slice's last turn: its uid would only be forgotten at the drop.
                nxt = ahead[0] if ahead and turn + 1 < turns and self._may_look_ahead(ahead[0]) else None
                early = asyncio.create_task(self._look_ahead(nxt, client)) if nxt is not None else None
                try:
                    moved_on = await self._forward(work, client)
                finally:
                    if early is not None:
                        # Never abandoned mid-recording: whether the uid was kept must be known.
                        await asyncio.wait([early])
                        if not early.cancelled() and early.exception() is None and nxt.submission is not None:
                            held = nxt
                if not moved_on:
                    return
                if early is not None and not early.cancelled() and early.exception() is None:
                    failed = early.result()
                    if failed is not None:
                        raise failed  # the DGI asked the point of sale to slow down: back off now
                # The entries read ahead hold only if this one moved the queue on to the first of
                # them, with nothing released meanwhile (an entry left `submitted` for the next
                # pass, a release: read the queue again).
                if ahead and (work.released_waiting or work.next_seq != ahead[0].seq):
                    ahead = []
        except Transient as exc:
            failures = work.failures if work is not None else 0
            # A small margin over Retry-After: our clock starts after the DGI's answer left it.
            delay = exc.delay + RETRY_MARGIN if exc.delay is not None else self._backoff(failures)
            await self.db(forwarding.back_off, outlet_id, self.owner, delay, str(exc), self.now())
            event("dgi.back_off", outlet_id=outlet_id, seconds=round(delay, 3), reason=str(exc))
        except Exception:
            log.error("dgi.outlet_failed", exc_info=True, extra={"fields": {"outlet_id": outlet_id}})
            await self.db(forwarding.back_off, outlet_id, self.owner, self._backoff(work.failures if work else 0),
                          "internal error (logged)", self.now())
        finally:
            if held is not None and held.submission is not None:
                await asyncio.shield(self._forget_ahead(held))
            await asyncio.shield(self.db(forwarding.drop, outlet_id, self.owner, self.now()))

    @staticmethod
    def _may_look_ahead(work: Work) -> bool:
        """Only an entry with nothing at the DGI yet: no device entry, nothing already recorded
        (a `submitted` entry is resolved when it is the head, as before)."""
        sub = work.submission
        return work.mode != "device" and (sub is None or (sub["state"] == "submitting" and not sub["uid"]))

    async def _look_ahead(self, work: Work, client: DgiClient) -> Transient | None:
        """Phase 1 of the entry after the head. Only a good answer is kept (its uid, `submitted`,
        under the lease), and marked on `work` so the entry, once the head, is confirmed at
        once. Anything else is not recorded: the entry meets it again when it is the head, in
        order (a refusal is quarantined there, not here). A request the DGI made without our
        keeping it is a stray, cancelled at the next take-up or expired. Returns the DGI's
        Transient, for the outlet to back off once the head is done."""
        try:
            answer = await client.call("POST", "/api/invoice", emcf_request(work.invoice))
            uid = answer.get("uid")
            total, vtotal = as_amount(answer.get("total")), as_amount(answer.get("vtotal"))
            if not isinstance(uid, str) or not uid or total is None or vtotal is None:
                return None
            if (total, vtotal) != our_totals(work.invoice):
                await self._cancel(client, uid)
                return None
            if await self.record(forwarding.record_ahead_in, work, self.owner, uid, str(total), str(vtotal),
                                 self.now()):
                work.submission = {"state": "submitted", "uid": uid, "total": str(total), "vtotal": str(vtotal),
                                   "ahead": True}
            else:
                await self._cancel(client, uid)
            return None
        except Transient as exc:
            return exc
        except Refused:
            return None
        except Exception:
            log.error("dgi.look_ahead_failed", exc_info=True, extra={"fields": {"outlet_id": work.outlet_id}})
            return None

    async def _forget_ahead(self, work: Work) -> None:
        uid = (work.submission or {}).get("uid")
        try:
            if uid and await self.db(forwarding.forget_ahead, work, self.owner, uid, self.now()):
                event("dgi.ahead_forgotten", outlet_id=work.outlet_id, seq=work.seq, uid=uid)
        except Exception:  # it stays `submitted`: resolved as any other when it is the head
            log.error("dgi.forget_ahead_failed", exc_info=True, extra={"fields": {"outlet_id": work.outlet_id}})

    def _backoff(self, failures: int) -> float:
        """Exponential with jitter: outlets that failed together do not all come back together."""
        ceiling = min(self.config.dgi_backoff_cap, BACKOFF_BASE * 2 ** min(failures, 20))
        return random.uniform(ceiling / 2, ceiling)

    async def _cancel_strays(self, outlet_id: str, client: DgiClient) -> None:
        """Cancel pending requests this cloud does not know: phase 1 answered, `uid` never
        committed (a crash). Never confirmed, so nothing is lost; they would hold pending slots."""
        pending = await client.call("GET", "/api/invoice")
        listed = pending.get("pendingRequestsList") or []
        if not listed:
            return
        known = await self.db(forwarding.known_uids, outlet_id)
        for each in listed:
            uid = each.get("uid") if isinstance(each, dict) else None
            if uid and uid not in known:
                await self._cancel(client, uid)

    async def _cancel(self, client: DgiClient, uid: str) -> None:
        try:
            await client.call("PUT", f"/api/invoice/{uid}/cancel")
        except Refused:
            pass  # not pending any more (expired, cancelled): what we wanted

    async def _forward(self, work: Work, client: DgiClient) -> bool:
        """Take one entry to its end (normalized, device_reported, quarantined). False: stop the outlet."""
        if work.mode == "device":
            return await self.record(forwarding.record_device_in, work, self.owner, self.now())
        sub = work.submission
        if sub is not None and sub["state"] in ("normalized", "device_reported", "quarantined"):
            return await self.record(forwarding.pass_settled_in, work, self.owner, self.now())
        if sub is not None and sub["state"] == "submitted" and sub["uid"] and sub.get("ahead"):
            # Kept by this worker's look-ahead, under its lease, and no confirm sent since.
            return await self._confirm(work, client, sub["uid"], sub["total"], sub["vtotal"])
        if sub is not None and sub["state"] == "submitted" and sub["uid"]:
            known = await self._resolve(work, client, sub["uid"])
            if known == "confirmed":
                return True
            if known == "uncertain":
                return await self._quarantine(work, "DGI_UNCERTAIN", "the confirm's answer was lost and the DGI "
                                              "cannot be asked about the request: check it with the DGI, then "
                                              "release", sub["uid"])
            if known == "pending":
                return await self._confirm(work, client, sub["uid"], sub["total"], sub["vtotal"])
            await self.record(forwarding.forget_uid_in, work, self.now())
        return await self._submit(work, client)

    async def _resolve(self, work: Work, client: DgiClient, uid: str) -> str:
        """What became of a request whose confirm may have been sent: confirmed (recorded now),
        pending, gone (expired or cancelled: submit anew) or uncertain."""
        if self.config.dgi_lookup:
            try:
                data = await client.call("GET", f"/api/invoice/{uid}")
            except Refused as exc:
                if exc.status == 404:
                    # A uid it gave us and no longer knows (or no such lookup at all): only a
                    # person can tell whether it was normalized.
                    return "uncertain"
                raise Transient(f"the DGI cannot tell request {uid}'s status ({exc.code})") from None
            status = data.get("status")
            if status == "confirmed":
                if not data.get("codeDEFDGI"):
                    raise Transient(f"the DGI says request {uid} is confirmed but gives no code")
                await self.record(forwarding.record_normalized_in, work, self.owner, uid, data, self.now())
                event("dgi.resolved", outlet_id=work.outlet_id, seq=work.seq, uid=uid)
                return "confirmed"
            if status == "pending":
                return "pending"
            # Only a request known to be dead may be replaced by a new one.
            return "gone" if status in ("expired", "cancelled") else "uncertain"
        pending = await client.call("GET", "/api/invoice")
        uids = {e.get("uid") for e in pending.get("pendingRequestsList") or [] if isinstance(e, dict)}
        return "pending" if uid in uids else "uncertain"

    async def _submit(self, work: Work, client: DgiClient) -> bool:
        try:
            answer = await client.call("POST", "/api/invoice", emcf_request(work.invoice))
        except Refused as exc:
            return await self._quarantine(work, exc.code, exc.desc)
        uid = answer.get("uid")
        total, vtotal = as_amount(answer.get("total")), as_amount(answer.get("vtotal"))
        if not isinstance(uid, str) or not uid or total is None or vtotal is None:
            raise Transient("the DGI's phase-1 answer lacks uid, total or vtotal")
        ours = our_totals(work.invoice)
        if (total, vtotal) != ours:
            await self._cancel(client, uid)
            return await self._quarantine(work, "TOTALS_DIFFER", f"the DGI computes total {total} VAT {vtotal}, "
                                          f"the ledger {ours[0]} VAT {ours[1]}")
        if not await self.record(forwarding.record_submitted_in, work, self.owner, uid, str(total), str(vtotal),
                                 self.now()):
            await self._cancel(client, uid)  # another instance holds the outlet now
            return False
        work.submission = {"uid": uid, "total": str(total), "vtotal": str(vtotal)}
        return await self._confirm(work, client, uid, str(total), str(vtotal))

    async def _confirm(self, work: Work, client: DgiClient, uid: str, total: str, vtotal: str) -> bool:
        try:
            elements = await client.call("PUT", f"/api/invoice/{uid}/confirm",
                                         {"total": float(total), "vtotal": float(vtotal)})
        except Refused as exc:
            if exc.code == "NOT_PENDING" or exc.status in (404, 409):
                return True  # the next pass asks the DGI what became of it (`submitted` is kept)
            await self._cancel(client, uid)
            return await self._quarantine(work, exc.code, exc.desc, uid)
        if not elements.get("codeDEFDGI"):
            raise Transient("the DGI's confirm answer lacks codeDEFDGI")
        return await self.record(forwarding.record_normalized_in, work, self.owner, uid, elements, self.now())

    async def _quarantine(self, work: Work, code: str, desc: str, uid: str | None = None) -> bool:
        event("dgi.quarantined", level=logging.WARNING, outlet_id=work.outlet_id, seq=work.seq,
              invoice_id=work.invoice_id, error_code=code)
        return await self.record(forwarding.record_quarantine_in, work, self.owner, code, desc[:500], self.now(), uid)


async def forwarder_ctx(app) -> AsyncIterator[None]:
    """aiohttp cleanup context: run the forwarder beside the API when a DGI URL is configured."""
    from .app import CONFIG, SERVICE

    config = app[CONFIG]
    if not config.dgi_url:
        yield
        return
    forwarder = Forwarder(app[SERVICE], config)
    task = asyncio.create_task(forwarder.run())
    yield
    forwarder.stop()
    try:
        await asyncio.wait_for(task, 30)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        task.cancel()
