"""Gateway sessions: one per agent episode (task attempt), each with its token ledger.

With a data pool, opening a session binds it to the task's current attempt
(`DataPool.open_session`), every model call is recorded with `append_samples`, and reward /
finish go to the pool. Without one (a bare gateway, tests of the API alone) samples are kept in
memory.

Recording is write-behind: a call's answer goes out while its append is on the wire
(`record_behind`), and every later operation of the session (its next call, reward, finish,
inspection) first waits for the session's appends (`flush`). So the pool holds every sample of a
session before its episode can be rewarded or finished, and an append that failed (the lease was
lost, Redis is down) fails the session's next operation with that error, never silently. The
appends go through `data_pool.aio.AsyncAppender` on the gateway's event loop; the other pool
calls are blocking Redis calls, run in threads.

A session unused for `idle_timeout_s` is forgotten (its samples stay in the pool).

Which tasks a session may open: in a training run (`forge launch`) only tasks the trainer
submitted and an env worker leased; an unknown task id is refused (404, saying why). With
`record_new_tasks` (`forge serve`, where no trainer feeds tasks) a session for a new task id
creates the task (`DataPool.open_recording`: env `recorded`, leased to the gateway), so any agent
can be recorded over HTTP alone; the gateway then keeps its lease alive on every call. A task id
that exists and is running gets one more session (sub-agents), as in training; one that is no
longer running is refused (409 `task_exists`): a task is recorded once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from forge.ground.types import Sample, Task
from gateway.errors import APIError
from gateway.ledger import Ledger
from gateway.templates import ChatRenderer

RECORDED_ENV = "recorded"  # the env name of tasks that record_new_tasks creates
RECORDER = "gateway"  # the worker they are leased to


@dataclass
class CallRecord:
    """What the gateway knows about one recorded call beyond the Sample itself."""

    turn: int
    prefix_break: bool
    reused_tokens: int
    how: str  # fresh | extended | retry
    note: str = ""
    engine: str = ""


@dataclass
class Session:
    id: str
    task_id: str
    attempt: int
    ledger: Ledger
    metadata: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    finished: bool = False
    turns: int = 0
    prefix_breaks: int = 0
    records: list[CallRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # only without a pool
    pending: asyncio.Future[None] | None = None  # the session's latest append (write-behind)
    beat_at: float = field(default_factory=time.monotonic)  # when its task's lease was last renewed


def _pool_error(exc: Exception, what: str) -> APIError:
    from data_pool import PoolError, RedisUnavailable, StaleTaskError, UnknownTaskError

    if isinstance(exc, UnknownTaskError):
        return APIError(404, f"{what}: {exc}", code="task_not_found")
    if isinstance(exc, StaleTaskError):
        return APIError(
            409, f"{what}: the task is no longer running under this session ({exc})", code="stale"
        )
    if isinstance(exc, RedisUnavailable):
        return APIError(503, f"{what}: the data pool is unreachable ({exc})")
    if isinstance(exc, ValueError | PoolError):
        return APIError(400, f"{what}: {exc}")
    raise exc


class SessionStore:
    def __init__(
        self,
        renderer: ChatRenderer,
        pool: Any = None,
        max_anchors: int = 16,
        idle_timeout_s: float = 3600.0,
        record_new_tasks: bool = False,
    ):
        self.renderer = renderer
        self.pool = pool
        self.record_new_tasks = record_new_tasks and pool is not None
        self.max_anchors = max_anchors
        self.idle_timeout_s = idle_timeout_s
        self.sessions: dict[str, Session] = {}
        self._last_sweep = time.monotonic()
        self._appender: Any = None  # data_pool.aio.AsyncAppender, made on first use (on the loop)
        self._appender_loop: asyncio.AbstractEventLoop | None = None
        self._writes: set[asyncio.Future[None]] = set()  # appends not yet acknowledged

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < min(60.0, self.idle_timeout_s / 4):
            return
        self._last_sweep = now
        for sid in [s.id for s in self.sessions.values() if now - s.last_used > self.idle_timeout_s]:
            del self.sessions[sid]

    async def open(self, task_id: str, session_id: str | None, metadata: dict[str, Any] | None) -> Session:
        self._sweep()
        sid = session_id or f"sess-{secrets.token_hex(12)}"
        if sid in self.sessions:
            raise APIError(409, f"session {sid!r} already exists", code="session_exists")
        attempt = 0
        if self.record_new_tasks:
            attempt = await self._open_recorded(task_id, sid, metadata)
        elif self.pool is not None:
            attempt = await self._open_leased(task_id, sid)
        session = Session(sid, task_id, int(attempt), Ledger(self.renderer, self.max_anchors), metadata or {})
        self.sessions[sid] = session
        return session

    async def _open_leased(self, task_id: str, sid: str) -> int:
        from data_pool import UnknownTaskError

        try:
            return await asyncio.to_thread(self.pool.open_session, task_id, sid)
        except UnknownTaskError as exc:
            raise APIError(
                404,
                f"cannot open a session for task {task_id!r}: {exc}. This gateway serves a training "
                "run, where sessions open only for tasks the trainer submitted and an env worker "
                "leased; to record your own agent's tasks use `forge serve`, which creates them",
                code="task_not_found",
            ) from exc
        except Exception as exc:
            raise _pool_error(exc, f"cannot open a session for task {task_id!r}") from exc

    async def _open_recorded(self, task_id: str, sid: str, metadata: dict[str, Any] | None) -> int:
        from data_pool import DuplicateTaskError, StaleTaskError

        task = Task(id=task_id, env=RECORDED_ENV, payload={"metadata": metadata} if metadata else {})
        what = f"cannot open a session for task {task_id!r}"
        try:
            await asyncio.to_thread(self.pool.open_recording, task, sid, RECORDER)
            return 0
        except DuplicateTaskError:
            pass  # it exists: one more session of it while it runs (two creators may race here)
        except Exception as exc:
            raise _pool_error(exc, what) from exc
        try:
            return await asyncio.to_thread(self.pool.open_session, task_id, sid)
        except StaleTaskError as exc:
            raise APIError(
                409,
                f"{what}: it already exists and is no longer running ({exc}); a task is recorded "
                "once: open the session with a new task_id",
                code="task_exists",
            ) from exc
        except Exception as exc:
            raise _pool_error(exc, what) from exc

    async def keep(self, session: Session) -> None:
        """Renew the lease of a recorded session's task (at most every third of the lease), so a
        slow agent's task is not taken for a dead worker's."""
        if not self.record_new_tasks:
            return
        if time.monotonic() - session.beat_at < self.pool.cfg.lease_timeout_s / 3:
            return
        try:
            await asyncio.to_thread(self.pool.heartbeat, session.task_id, attempt=session.attempt)
        except Exception as exc:
            raise _pool_error(exc, f"cannot renew the task of session {session.id!r}") from exc
        session.beat_at = time.monotonic()

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise APIError(
                404,
                f"session {session_id!r} not found (never opened, or forgotten after idling)",
                code="session_not_found",
            )
        session.last_used = time.monotonic()
        return session

    def usable(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session.finished:
            raise APIError(409, f"session {session_id!r} is finished", code="session_finished")
        return session

    def record_behind(self, session: Session, samples: list[Sample]) -> None:
        """Start recording `samples` after the session's earlier appends; `flush` waits for it."""
        if self.pool is None:
            session.samples.extend(samples)
            return
        task = asyncio.ensure_future(self._append_after(session.pending, session, samples))
        task.add_done_callback(_retrieve)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        session.pending = task

    async def _append_after(
        self, previous: asyncio.Future[None] | None, session: Session, samples: list[Sample]
    ) -> None:
        if previous is not None:
            await previous  # in call order; after a failed append, this one fails with its error
        try:
            appender = self._get_appender()
            if appender is None:
                await asyncio.to_thread(self.pool.append_samples, samples)
            else:
                await appender.append_samples(samples)
        except Exception as exc:
            raise _pool_error(exc, f"cannot record the call in session {session.id!r}") from exc

    async def flush(self, session: Session) -> None:
        """Wait until the session's calls are in the pool; raise the error of an append that failed
        (a 409 `stale` when the task's lease was lost)."""
        if session.pending is not None:
            await asyncio.shield(session.pending)  # a disconnecting client does not cancel the append

    def _get_appender(self) -> Any:
        """The event loop's own connection for appends, when the pool's URL allows one (not TLS)."""
        from data_pool import DataPool
        from data_pool.aio import AsyncAppender

        loop = asyncio.get_running_loop()
        if self._appender is None or self._appender_loop is not loop:
            if not isinstance(self.pool, DataPool) or not AsyncAppender.supported(self.pool):
                return None
            self._appender, self._appender_loop = AsyncAppender(self.pool), loop
        return self._appender

    async def aclose(self) -> None:
        if self._writes:  # let acknowledged answers reach the pool before the connection closes
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._appender is not None:
            await self._appender.aclose()
            self._appender = None

    async def reward(self, session: Session, reward: float, step_rewards: Any, metrics: Any) -> None:
        await self.flush(session)
        if self.pool is None:
            session.metadata["reward"] = {"reward": reward, "step_rewards": step_rewards, "metrics": metrics}
            return
        try:
            await asyncio.to_thread(
                self.pool.set_reward, session.task_id, reward, step_rewards, metrics, attempt=session.attempt
            )
        except Exception as exc:
            raise _pool_error(exc, f"cannot set the reward of session {session.id!r}") from exc

    async def finish(self, session: Session) -> None:
        await self.flush(session)
        if self.pool is not None:
            try:
                await asyncio.to_thread(self.pool.finish, session.task_id, attempt=session.attempt)
            except Exception as exc:
                raise _pool_error(exc, f"cannot finish session {session.id!r}") from exc
        session.finished = True
        session.ledger.anchors.clear()

    async def samples(self, session: Session) -> list[Sample]:
        await self.flush(session)
        if self.pool is None:
            return list(session.samples)
        try:
            return await asyncio.to_thread(self.pool.samples, session.task_id, session.id)
        except Exception as exc:
            raise _pool_error(exc, f"cannot read the samples of session {session.id!r}") from exc


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a failed append's error as seen: `flush` raises it to the session's next operation."""
    if not task.cancelled():
        task.exception()
