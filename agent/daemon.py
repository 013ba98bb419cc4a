"""The agent daemon: the POS API, the journal, the signers and the background work, one process.

The parts are composed with aiohttp's cleanup contexts, in the order they depend on each other
(journal → cloud client and scheduler → signers → service → background work); each context
opens its part, and the runner closes them in reverse on the way out, whatever failed.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from fiscal.examples import SAMPLE

from . import systemd_notify
from .api.app import attach, init_app
from .cloud_client import CloudClient
from .errors import CloudError
from .config import AgentConfig
from .journal import Journal
from .signers.credentials import credential_status
from .renewal import CredentialKeeper
from .service import AgentService, build_policy, open_journal
from .signers import Probing, Settling, SignerPolicy
from .signers.delegated import DelegatedSigner
from .signers.queued import QueuedSigner
from .sync import SyncWorker

log = logging.getLogger("stalela.agent")

CONFIG = web.AppKey("config", AgentConfig)
JOURNAL = web.AppKey("journal", Journal)
CLIENT = web.AppKey("cloud_client", CloudClient)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
POLICY = web.AppKey("policy", SignerPolicy)
DAEMON_SERVICE = web.AppKey("daemon_service", AgentService)


def _warm_up(service: AgentService) -> None:
    """Pay the first-use costs (lazy imports, validators, tax table, first page reads) before
    READY, so the first invoice after a restart costs about what a warm one does. Seals nothing."""
    try:
        job = service.prepare({**SAMPLE, "request_id": "warm-up"})
        # The writer's first seal: signed and rolled back, so nothing stays and no number is used.
        service.journal.rehearse(job)
        service.stored_answer(job)
    except Exception:  # a warm-up must never stop the start
        log.debug("warm-up skipped", exc_info=True)
    credential_status(service.journal.reader)


async def _warm_up_http(host: str, port: int) -> None:
    """One request to ourselves before READY: aiohttp's first-request costs are paid here."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1" if host in ("", "0.0.0.0", "::") else host, port), 2)
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: warm-up\r\nConnection: close\r\n\r\n")
        await asyncio.wait_for(reader.read(), 2)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        log.debug("HTTP warm-up skipped", exc_info=True)


# ----------------------------------------------------------------------------- the parts
async def _journal_ctx(app: web.Application) -> AsyncIterator[None]:
    app[JOURNAL] = open_journal(app[CONFIG])
    yield
    app[JOURNAL].close()


async def _cloud_client_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    token = config.token_path.read_text("utf-8").strip() if config.token_path.exists() else None
    app[CLIENT] = CloudClient(config.cloud_url, token=token, timeout=config.cloud_timeout)
    yield
    await app[CLIENT].close()


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SCHEDULER] = AsyncIOScheduler()
    yield
    if app[SCHEDULER].running:
        app[SCHEDULER].shutdown(wait=False)


async def _signers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every signer the configured policy names and this outlet can run, behind one breaker each."""
    config, journal, scheduler = app[CONFIG], app[JOURNAL], app[SCHEDULER]
    wanted = set(config.signer_policy)
    signers: dict = {}
    last_wake = [0.0]

    def renewal_wake() -> None:
        # Run the renewal job now (at most every 0.2 s) instead of at its next interval.
        now = time.monotonic()
        if now - last_wake[0] >= 0.2:
            last_wake[0] = now
            job = scheduler.get_job("credential-renewal")
            if job is not None:
                job.modify(next_run_time=datetime.now(timezone.utc))

    sealer = None
    if "delegated" in wanted:
        if config.sealing_process_enabled:
            from .sealer import SealerProcess
            # Started when delegated sales overlap, stopped after a quiet spell (see agent/sealer.py).
            sealer = SealerProcess(config.data_dir, journal, idle_seconds=config.sealing_process_idle,
                                   log_level=logging.getLevelName(logging.getLogger().level))
        signers["delegated"] = DelegatedSigner(journal, sealer=sealer, renew_below=config.renew_below_numbers,
                                               on_low=renewal_wake)
    if "queued" in wanted:
        signers["queued"] = QueuedSigner(journal)
    token = app[CLIENT].token
    if "cloud" in wanted and token:
        from .signers.cloud import CloudSigner
        signers["cloud"] = CloudSigner(journal, config.cloud_url, token, journal.identity.issuer_public_key,
                                       isf=journal.isf, timeout=config.signer_cloud_timeout,
                                       clock_margin=config.signer_cloud_clock_margin)
    device_breaker = None
    if config.device_url and "device" in wanted:
        from .device.signer import from_config as device_signer
        from .signers import Breaker
        device_breaker = Breaker(config.breaker_seconds)
        signers["device"] = device_signer(config, journal, journal.identity, journal.tz,
                                          on_available=device_breaker.reset)
    policy = build_policy(config, signers, breakers={"device": device_breaker} if device_breaker else None)
    app[POLICY] = policy
    if "device" in signers:
        await signers["device"].start()  # start-up recovery runs first on the device's worker
    try:
        yield
    finally:
        if "cloud" in signers:
            await signers["cloud"].close()
        if "device" in signers:
            await signers["device"].close()
        if sealer is not None:
            await sealer.stop()


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    config, journal, client = app[CONFIG], app[JOURNAL], app[CLIENT]
    sync = SyncWorker(config.db_path, client, batch_size=config.sync_batch_size, interval=config.sync_interval,
                      attempts=4, max_backoff=max(2.0, min(60.0, config.sync_interval * 10)))
    keeper = CredentialKeeper(journal, journal.identity, config, client)
    delegated = app[POLICY].entry("delegated")
    service = AgentService(config=config, journal=journal, policy=app[POLICY], sync=sync, keeper=keeper,
                           sealer=delegated.signer.sealer if delegated is not None else None)
    _warm_up(service)
    attach(app, service)
    app[DAEMON_SERVICE] = service
    try:
        yield
    finally:
        sync.close()


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    """Renewal, the outbox, the automatic Z, drafts, retention and the cloud probe."""
    config, service, scheduler, client = app[CONFIG], app[DAEMON_SERVICE], app[SCHEDULER], app[CLIENT]
    keeper = service.keeper
    scheduler.add_job(keeper.check, "interval", seconds=config.check_interval, id="credential-renewal",
                      max_instances=1, coalesce=True)
    if "queued" in config.signer_policy:
        scheduler.add_job(service.seal_drafts, "interval", seconds=max(1.0, config.sync_interval), id="drafts",
                          max_instances=1, coalesce=True)

    async def retention() -> None:
        from .retention import discard_acknowledged
        await asyncio.wrap_future(service.journal.run_in_writer(
            lambda conn: discard_acknowledged(conn, config.retention_days)))

    async def probe_signers() -> None:
        # One owner per source: re-close a signer's breaker as soon as its link answers again,
        # then settle what that signer left open while it was away.
        for entry in service.policy.entries:
            if not entry.breaker.allows() and isinstance(entry.signer, Probing) and await entry.signer.probe():
                entry.breaker.reset()
                log.info("signer back", extra={"event": "signer.recovered", "signer": entry.name})
            if entry.breaker.allows() and isinstance(entry.signer, Settling):
                try:
                    await entry.signer.settle()
                except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                    log.debug("nothing settled yet", extra={"event": "signer.settle_later", "signer": entry.name,
                                                            "error": exc.__class__.__name__})

    async def heartbeat() -> None:
        # The outlet's "last seen" in the cloud when there are no sales: without it, a shop with
        # its box on and no customers looks like a box that is off. Failures are the sync's to
        # report (the same link); a heartbeat is not retried, the next one comes anyway.
        if client.token is None:
            return  # not enrolled with a cloud
        try:
            await client.heartbeat()
        except CloudError as exc:
            log.debug("heartbeat not delivered", extra={"event": "cloud.heartbeat_failed", "error": exc.detail})

    watch = HealthWatch(service)
    scheduler.add_job(watch.check, "interval", seconds=1, id="health-watch", max_instances=1, coalesce=True)
    scheduler.add_job(retention, "interval", hours=1, id="retention", max_instances=1, coalesce=True)
    # The first one a few seconds after start (a restarted box is seen at once), then every interval.
    scheduler.add_job(heartbeat, "interval", seconds=config.heartbeat_interval, id="heartbeat", max_instances=1,
                      coalesce=True, next_run_time=datetime.now(timezone.utc) + timedelta(seconds=2))
    scheduler.add_job(probe_signers, "interval", seconds=max(1.0, min(5.0, config.breaker_seconds / 3)),
                      id="signer-probe", max_instances=1, coalesce=True)
    scheduler.start()
    from .reports import run_scheduled_z
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(keeper.check()),  # first check right away, off the start path
             loop.create_task(service.sync.run()),
             loop.create_task(run_scheduled_z(service, config.reports_z_time))]
    interval = systemd_notify.watchdog_interval()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(interval)
            # Only ping while the journal writer is alive: a dead writer means a restart is due.
            if service.journal.writer_alive():
                systemd_notify.notify("WATCHDOG=1")

    if interval:
        tasks.append(loop.create_task(watchdog()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HealthWatch:
    """Logs one event each time the outlet's health changes colour (`health.changed`), so an
    operator reading the log sees when sales had to halt and when they resumed: `blocked` at
    error level, a degraded or offline state as a warning, the way back as info."""

    LEVELS = {"red": logging.ERROR, "amber": logging.WARNING}

    def __init__(self, service: AgentService) -> None:
        self.service = service
        self.last: tuple[str, str] | None = None

    async def check(self) -> None:
        # A coroutine, so the scheduler runs it on the event loop: health reads the journal's
        # reader connection, which the loop's handlers use, and must not be read from a worker
        # thread at the same time.
        health = self.service.health()
        now = (health["status"], health["state"])
        if now == self.last:
            return
        before, self.last = self.last, now
        fields = {"event": "health.changed", "status": now[0], "state": now[1], "mode": health["mode"],
                  "from_status": before[0] if before else None, "from_state": before[1] if before else None}
        if "reason" in health:
            fields["reason"] = health["reason"]
        log.log(self.LEVELS.get(now[1], logging.INFO), f"health {now[0]} ({now[1]})", extra=fields)


def build_app(config: AgentConfig) -> web.Application:
    app = init_app(config)
    app[CONFIG] = config
    app.cleanup_ctx.extend([_journal_ctx, _cloud_client_ctx, _scheduler_ctx, _signers_ctx, _service_ctx,
                            _background_ctx])
    return app


async def serve(config: AgentConfig) -> None:
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()  # runs the cleanup contexts: every part is open from here
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        await _warm_up_http(config.host, config.port)
        log.info("agent ready", extra={"event": "agent.ready", "url": f"http://{config.host}:{config.port}",
                                       "outlet": app[JOURNAL].identity.outlet_id,
                                       "startup_ms": round((time.monotonic() - started) * 1000, 1)})
        systemd_notify.notify("READY=1\nSTATUS=sealing")
        await stop.wait()
    finally:
        log.info("agent stopping", extra={"event": "agent.stopping"})
        systemd_notify.notify("STOPPING=1")
        await runner.cleanup()
