"""Bounded calls into user code (environment methods, in-process agents).

A plain function runs in its own daemon thread so that a slow or hung one never blocks the
worker's event loop; on timeout the worker moves on and the thread is abandoned (Python cannot
kill a thread; a function that never returns leaks one thread, nothing else). A coroutine
function is awaited directly and cancelled on timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class EnvTimeout(TimeoutError):
    """User code ran past its time limit."""


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        try:
            outcome = (future.set_result, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (future.set_exception, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop closed while this call hung; nobody is waiting any more
            pass

    threading.Thread(target=run, name=f"forge-env-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future


async def bounded(fn: Callable[..., Any], *args: Any, timeout: float, what: str) -> Any:
    """`fn(*args)` (plain or async), raising `EnvTimeout` naming `what` after `timeout` seconds."""
    if inspect.iscoroutinefunction(fn):
        awaitable = fn(*args)
    else:
        awaitable = _in_thread(fn, *args)
    try:
        result = await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise EnvTimeout(f"{what} did not return within {timeout:g}s") from None
    if inspect.isawaitable(result):  # a plain function that returned a coroutine
        try:
            result = await asyncio.wait_for(result, timeout)
        except TimeoutError:
            raise EnvTimeout(f"{what} did not return within {timeout:g}s") from None
    return result
