"""Serving an aiohttp app on a thread of its own (in-process gateways and engines: tests, Ray actors).

served = serve_in_thread(lambda: build_app(...), "127.0.0.1", 0, name="forge-gateway")
served.port; served.loop; served.stop()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class ServedApp:
    """An app listening on `port`, served by `loop` on `thread`."""

    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    runner: web.AppRunner

    def stop(self, timeout: float = 30.0) -> None:
        """Clean the app up (its on_cleanup hooks), stop the loop, join the thread."""
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=timeout)


async def start_runner(
    app: web.Application, host: str, port: int, backlog: int = 128
) -> tuple[web.AppRunner, int]:
    """Set `app` up and listen on host:port (0: any free port); returns the runner and the port.
    A handler whose client went away is cancelled (frees its slot); no access log."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed (it is a dependency; the GPU image's bundle may lack
    it): on the 2-core machine it cut the gateway's added latency per call by ~0.5-1 ms."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_in_thread(
    make_app: Callable[[], web.Application], host: str, port: int, name: str, backlog: int = 128
) -> ServedApp:
    """Build the app with `make_app()` on a new thread with its own event loop and serve it there;
    returns once it listens (re-raising what went wrong while starting)."""
    loop = new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"], started["port"] = loop.run_until_complete(
                start_runner(make_app(), host, port, backlog)
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            started["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]
    return ServedApp(started["port"], loop, thread, started["runner"])
