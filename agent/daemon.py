"""The agent daemon: HTTP API + journal writer + credential renewal, one process."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import datetime, timezone

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import systemd_notify
from .api.app import init_app
from .cloud_client import CloudClient
from .config import AgentConfig
from fiscal.examples import SAMPLE
from .renewal import CredentialKeeper
from .service import AgentService
from .signers import Breaker
from .sync import SyncWorker

log = logging.getLogger("stalela.agent")


def _warm_up(service: AgentService) -> None:
    """Pay the first-use costs (lazy imports, validators, tax table, first page reads) before
    READY, so the first invoice after a restart costs about what a warm one does. Seals nothing."""
    from .journal import credential_status

    try:
        job = service.prepare({**SAMPLE, "request_id": "warm-up"})
        # The writer's first seal: signed and rolled back, so nothing stays and no number is used.
        service.journal.rehearse(job)
    except Exception:  # a warm-up must never stop the start
        log.debug("warm-up skipped", exc_info=True)
    credential_status(service.journal.reader)
    service.existing("warm-up")


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


async def serve(config: AgentConfig, *, ready_line: bool = True) -> None:
    started = time.monotonic()
    service = AgentService.open(config)
    service.breaker = Breaker(config.breaker_seconds)
    token = config.token_path.read_text("utf-8").strip() if config.token_path.exists() else None
    client = CloudClient(config.cloud_url, token=token, timeout=config.cloud_timeout)
    keeper = CredentialKeeper(service, client)
    sync = SyncWorker(config.db_path, client, batch_size=config.sync_batch_size, interval=config.sync_interval,
                      attempts=4, max_backoff=max(2.0, min(60.0, config.sync_interval * 10)))
    service.sync = sync
    if "cloud" in config.signer_policy and token:
        from .cloud_signer import CloudSigner
        service.cloud = CloudSigner(service.journal, config.cloud_url, token, service.identity.issuer_public_key,
                                    isf=service.journal.isf, timeout=config.signer_cloud_timeout)
    if config.device_url and "device" in config.signer_policy:
        from .device.signer import from_config as device_signer
        service.device = device_signer(config, service)
        await service.device.start()  # start-up recovery runs first on the device's worker
    _warm_up(service)
    if config.sealing_process_enabled and "delegated" in config.signer_policy:
        from .sealer import SealerProcess
        # Started when delegated sales overlap, stopped after a quiet spell (see agent/sealer.py).
        service.sealer = SealerProcess(config.data_dir, service.journal, idle_seconds=config.sealing_process_idle,
                                       log_level=logging.getLevelName(logging.getLogger().level))
    app = init_app(service)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    await _warm_up_http(config.host, config.port)

    scheduler = AsyncIOScheduler()
    scheduler.add_job(keeper.check, "interval", seconds=config.check_interval, id="credential-renewal",
                      max_instances=1, coalesce=True)
    scheduler.start()

    last_wake = [0.0]

    def renewal_wake() -> None:
        # Run the renewal job now (at most every 0.2 s) instead of at its next interval.
        now = time.monotonic()
        if now - last_wake[0] >= 0.2:
            last_wake[0] = now
            job = scheduler.get_job("credential-renewal")
            if job is not None:
                job.modify(next_run_time=datetime.now(timezone.utc))

    service.renewal_wake = renewal_wake
    asyncio.get_running_loop().create_task(keeper.check())  # first check right away, off the start path
    sync_task = asyncio.get_running_loop().create_task(sync.run())
    from .reports import run_scheduled_z
    z_task = asyncio.get_running_loop().create_task(run_scheduled_z(service, config.reports_z_time))

    async def probe_cloud() -> None:
        # One owner per source: re-close the cloud breaker as soon as the cloud answers again.
        if service.cloud is not None and not service.breaker.allows("cloud"):
            if await service.cloud.probe():
                service.breaker.reset("cloud")
                log.info("cloud signer back", extra={"event": "signer.recovered", "signer": "cloud"})

    async def retention() -> None:
        from .retention import discard_acknowledged
        await asyncio.wrap_future(service.journal.run_in_writer(
            lambda conn: discard_acknowledged(conn, config.retention_days)))

    if "queued" in config.signer_policy:
        scheduler.add_job(service.seal_drafts, "interval", seconds=max(1.0, config.sync_interval), id="drafts",
                          max_instances=1, coalesce=True)
    scheduler.add_job(retention, "interval", hours=1, id="retention", max_instances=1, coalesce=True)
    scheduler.add_job(probe_cloud, "interval", seconds=max(1.0, min(5.0, config.breaker_seconds / 3)),
                      id="cloud-probe", max_instances=1, coalesce=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    log.info("agent ready", extra={"event": "agent.ready", "url": f"http://{config.host}:{config.port}",
                                   "outlet": service.identity.outlet_id,
                                   "startup_ms": round((time.monotonic() - started) * 1000, 1)})
    systemd_notify.notify("READY=1\nSTATUS=sealing")
    interval = systemd_notify.watchdog_interval()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(interval)
            # Only ping while the journal writer is alive: a dead writer means a restart is due.
            if service.journal._thread.is_alive():
                systemd_notify.notify("WATCHDOG=1")

    wd = loop.create_task(watchdog()) if interval else None
    try:
        await stop.wait()
    finally:
        log.info("agent stopping", extra={"event": "agent.stopping"})
        systemd_notify.notify("STOPPING=1")
        if wd:
            wd.cancel()
        for task in (sync_task, z_task):
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        sync.close()
        scheduler.shutdown(wait=False)
        await runner.cleanup()
        await client.close()
        if service.cloud is not None:
            await service.cloud.close()
        if service.device is not None:
            await service.device.close()
        if service.sealer is not None:
            await service.sealer.stop()
        service.close()
