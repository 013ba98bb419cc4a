"""Running the cloud as a process: AppRunner + TCPSite, clean stop on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import gc
import signal

from aiohttp import web

from .app import SERVICE, init_app
from .config import CloudConfig
from .forwarder import forwarder_ctx
from .logs import event


async def serve(config: CloudConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until `stop` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = init_app(config)
    app.cleanup_ctx.append(forwarder_ctx)  # DGI forwarding, when a DGI URL is configured
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()  # opens the database and the issuer key (created on first run)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise rescan it all every few reconcile batches
    # (≈ 30 µs per invoice reconciled).
    gc.freeze()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        event("cloud.ready", host=host, port=port, data_dir=str(config.data_dir),
              issuer_key_id=app[SERVICE].issuer.key_id)
        await stop.wait()
        event("cloud.stopping")
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    event("cloud.stopped")


def run(config: CloudConfig) -> None:
    asyncio.run(serve(config))
