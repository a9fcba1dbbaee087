"""`EnvWorker`: pulls tasks from the data pool and runs their episodes against the gateway.

One worker runs up to `concurrency` episodes at once on one asyncio loop. For each task:

    acquire (pool, within its in-flight bound) → POST {gateway}/sessions {task_id}
    → build the task's environment → run_episode(env, session base URL)   [heartbeating the lease]
    → check the recorded samples → pool.set_reward(...) → pool.finish(...)

Anything that goes wrong inside an episode — the environment raises, returns a non-numeric reward,
hangs past its step or episode timeout, the agent program crashes, the gateway refuses the
session, the recorded samples do not match the model calls — aborts that episode with the reason
(`pool.abort`: retried with the same FIFO position, or `failed` after `max_attempts`), and the
worker carries on. An episode whose next call no longer fits the model's context ends truncated
(runner: its calls so far are trained on, `context_truncated` in its metrics); one whose first call
already does not fit, and a task naming an unregistered environment, are failed at once (no
retry can run them). A task whose lease was lost (this worker stalled; the pool gave it to another) is
dropped silently by this worker: it is no longer ours to finish or abort. A worker that dies
(kill -9) stops heartbeating; the pool retries its tasks when their leases expire.

The worker needs no Ray; `agent_side.ray_worker` wraps it in a Ray actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from agent_side.env import EnvConfig
from agent_side.registry import get_env, load_env_modules, make_config
from agent_side.runner import (
    ContextExceeded,
    EpisodeError,
    EpisodeOutcome,
    episode_http_client,
    run_episode,
)
from data_pool.errors import StaleTaskError, UnknownTaskError
from forge.ground.types import Task

log = logging.getLogger(__name__)

GATEWAY_TIMEOUT_S = 60.0  # session open / reward / finish calls (model calls: the episode timeout)


class SessionError(RuntimeError):
    """The gateway did not open a session for the task."""


class LeaseLost(RuntimeError):
    """The pool no longer leases this task to this worker."""


class EnvWorker:
    """Runs episodes of pool tasks against a gateway. Plain asyncio; no Ray needed."""

    def __init__(
        self,
        pool: Any,
        gateway_url: str,
        worker_id: str | None = None,
        *,
        concurrency: int = 8,
        env_configs: Mapping[str, Mapping[str, Any] | EnvConfig] | None = None,
        model: str = "default",
        api_key: str = "forge",
        poll_s: float = 0.5,
        heartbeat_s: float | None = None,
        env_modules: list[str] | tuple[str, ...] = (),
    ) -> None:
        """`pool`: a `data_pool.DataPool`. `env_configs`: per environment name, config overrides
        (a mapping, e.g. a resolved Hydra node, or an EnvConfig). `heartbeat_s` defaults to a third
        of the pool's lease timeout. `env_modules`: modules (or .py files) that register extra
        environments, imported first (a Ray actor does not share the driver's registry)."""
        load_env_modules(env_modules)
        self.pool = pool
        self.gateway_url = gateway_url.rstrip("/")
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = max(1, int(concurrency))
        self.model = model
        self.api_key = api_key
        self.poll_s = poll_s
        lease = getattr(getattr(pool, "cfg", None), "lease_timeout_s", 600.0)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.2, lease / 3)
        self._configs = {name: make_config(name, cfg) for name, cfg in (env_configs or {}).items()}
        self._stop = asyncio.Event()
        self._running: dict[str, asyncio.Task[str]] = {}
        self.stats: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(self.concurrency + 4, thread_name_prefix=f"pool-{self.worker_id}")

    # ------------------------------------------------------------------ pool calls (sync client)
    async def _pool(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def config_for(self, env_name: str) -> EnvConfig:
        if env_name not in self._configs:
            self._configs[env_name] = make_config(env_name)
        return self._configs[env_name]

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Stop acquiring tasks; `run` returns once the running episodes are done."""
        self._stop.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self, max_episodes: int | None = None, idle_exit_s: float | None = None) -> dict[str, int]:
        """Acquire and run tasks until `stop()`, until `max_episodes` episodes were started, or
        until nothing could be acquired for `idle_exit_s` seconds with nothing running. Returns the
        counters (finished, aborted, failed, lease_lost, …)."""
        self._stop.clear()
        slots = asyncio.Semaphore(self.concurrency)
        started = 0
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set() and (max_episodes is None or started < max_episodes):
                await slots.acquire()
                if self._stop.is_set():
                    slots.release()
                    break
                try:
                    task = await self._pool(self.pool.acquire_task, self.worker_id, timeout=self.poll_s)
                except Exception as exc:  # Redis hiccup: back off, keep going
                    slots.release()
                    self.stats["pool_errors"] += 1
                    log.warning("worker %s: acquire_task failed: %s", self.worker_id, exc)
                    await asyncio.sleep(self.poll_s)
                    continue
                if task is None:
                    slots.release()
                    if self._running:  # idle means: nothing to acquire *and* nothing running
                        idle_since = time.monotonic()
                    elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                started += 1
                key = f"{task.id}#{task.attempt}"  # a retried task may overlap its lost attempt
                episode = asyncio.create_task(self.run_task(task), name=f"episode-{key}")
                self._running[key] = episode
                episode.add_done_callback(lambda _t, k=key: (self._running.pop(k, None), slots.release()))
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)
        finally:
            for episode in list(self._running.values()):
                episode.cancel()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)
        return dict(self.stats)

    # ------------------------------------------------------------------ one task
    async def run_task(self, task: Task) -> str:
        """Run one acquired task to its end; returns "finished", "aborted", "failed" or "lease_lost"."""
        try:
            result = await self._run_task(task)
        except asyncio.CancelledError:
            # the worker is shutting down: give the task back so another worker retries it
            with contextlib.suppress(Exception):
                await asyncio.shield(self._abort(task, "worker stopped mid-episode"))
            raise
        except Exception as exc:  # the pool itself failed; the lease will expire and the task retry
            log.warning("worker %s: could not settle %s with the pool: %s", self.worker_id, task.id, exc)
            result = "pool_errors"
        self.stats[result] += 1
        return result

    async def _run_task(self, task: Task) -> str:
        try:
            spec = get_env(task.env)
        except KeyError as exc:
            return await self._fail(task, str(exc))
        # the episode's own connection (session calls, model calls): see episode_http_client
        async with episode_http_client() as http:
            return await self._run_episode_task(task, spec, http)

    async def _run_episode_task(self, task: Task, spec: Any, http: httpx.AsyncClient) -> str:
        started = time.monotonic()
        beat = asyncio.create_task(self._heartbeat(task))
        episode = asyncio.create_task(self._episode(task, spec, http))
        try:
            done, _ = await asyncio.wait({beat, episode}, return_when=asyncio.FIRST_COMPLETED)
            if beat in done and not episode.done():  # the lease is gone: stop working on it
                episode.cancel()
                with contextlib.suppress(BaseException):
                    await episode
                return "lease_lost"
            session_id, outcome = episode.result()
        except LeaseLost:
            return "lease_lost"
        except ContextExceeded as exc:  # a retry renders the same first prompt: fail at once
            return await self._fail(task, str(exc))
        except (EpisodeError, SessionError) as exc:
            return await self._abort(task, str(exc))
        except Exception as exc:  # a bug or an unexpected failure: still never lose the task
            log.exception("worker %s: episode %s crashed", self.worker_id, task.id)
            return await self._abort(task, f"worker error: {type(exc).__name__}: {exc}")
        finally:
            for child in (beat, episode):
                if not child.done():
                    child.cancel()
                    with contextlib.suppress(BaseException):
                        await child
        # the episode's wall time in this worker (lease → done), for the rollout timing metrics
        outcome.metrics = {**outcome.metrics, "episode_s": time.monotonic() - started}
        return await self._submit(task, session_id, outcome, http)

    async def _episode(self, task: Task, spec: Any, http: httpx.AsyncClient) -> tuple[str, EpisodeOutcome]:
        config = self.config_for(task.env)
        try:
            env = spec.env_class(config, task)
        except Exception as exc:
            raise EpisodeError(f"building {task.env} env failed: {type(exc).__name__}: {exc}") from exc
        session_id, base_url = await self._open_session(task, http)
        try:
            outcome = await asyncio.wait_for(
                run_episode(env, base_url, self.api_key, self.model, http), config.episode_timeout_s
            )
        except TimeoutError:
            raise EpisodeError(f"episode timed out after {config.episode_timeout_s:g}s") from None
        return session_id, outcome

    async def _heartbeat(self, task: Task) -> None:
        """Extend the lease while the episode runs; returns when the lease is lost."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._pool(self.pool.heartbeat, task.id, attempt=task.attempt)
            except (StaleTaskError, UnknownTaskError):
                log.warning("worker %s: lost the lease of %s", self.worker_id, task.id)
                return
            except Exception as exc:  # Redis hiccup: try again next beat
                log.warning("worker %s: heartbeat of %s failed: %s", self.worker_id, task.id, exc)

    async def _gateway(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
        return await http.post(
            f"{self.gateway_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=GATEWAY_TIMEOUT_S,
        )

    async def _open_session(self, task: Task, http: httpx.AsyncClient) -> tuple[str, str]:
        try:
            resp = await self._gateway(http, "/sessions", {"task_id": task.id})
        except httpx.HTTPError as exc:
            raise SessionError(f"gateway unreachable at {self.gateway_url}: {exc!r}") from exc
        if resp.status_code == 409 and _error_code(resp) == "stale":
            raise LeaseLost(resp.text[:300])
        if resp.status_code >= 300:
            raise SessionError(
                f"gateway refused a session for {task.id}: {resp.status_code} {resp.text[:300]}"
            )
        body = resp.json()
        if body.get("attempt", task.attempt) != task.attempt:
            raise LeaseLost(f"session bound to attempt {body.get('attempt')}, ours is {task.attempt}")
        session_id, base_url = str(body.get("session_id", "")), str(body.get("base_url", ""))
        if not session_id or not base_url:
            raise SessionError(f"gateway returned no session for {task.id}: {resp.text[:300]}")
        return session_id, str(httpx.URL(self.gateway_url + "/").join(base_url))

    async def _submit(
        self, task: Task, session_id: str, outcome: EpisodeOutcome, http: httpx.AsyncClient
    ) -> str:
        """Reward through the gateway (which first waits until the session's calls are in the pool),
        check the recorded samples, then finish (the gateway also forgets the session); the pool
        directly when the gateway no longer knows the session."""
        reward = {
            "reward": outcome.reward,
            "step_rewards": outcome.step_rewards or None,
            "metrics": outcome.metrics,
        }
        try:
            if refused := await self._gateway_step(http, task, f"/sessions/{session_id}/reward", reward):
                return refused
            if refused := await self._check_recorded(task, outcome):
                return refused
            if refused := await self._gateway_step(http, task, f"/sessions/{session_id}/finish", {}):
                return refused
        except (httpx.HTTPError, SessionError) as exc:
            log.warning(
                "worker %s: gateway could not finish %s (%s); finishing in the pool",
                self.worker_id,
                task.id,
                exc,
            )
            return await self._submit_to_pool(task, outcome)
        return "finished"

    async def _gateway_step(
        self, http: httpx.AsyncClient, task: Task, path: str, body: dict[str, Any]
    ) -> str | None:
        """None when the gateway took the reward / finish; the episode's outcome when the pool
        refused it; SessionError when the gateway could not be used."""
        resp = await self._gateway(http, path, body)
        if resp.status_code == 409 and _error_code(resp) == "stale":
            return "lease_lost"
        if resp.status_code == 400:
            return await self._abort(task, f"pool refused the episode: {resp.text[:300]}")
        if resp.status_code >= 300:
            raise SessionError(f"{resp.status_code} {resp.text[:200]}")
        return None

    async def _check_recorded(self, task: Task, outcome: EpisodeOutcome) -> str | None:
        """None when the pool holds one sample per model call of the episode (and the task is still
        ours); otherwise the episode's outcome (aborted / lease_lost)."""
        info = await self._pool(self.pool.task_status, task.id)
        if info.status != "running" or info.attempt != task.attempt:
            return "lease_lost"
        if info.n_samples == 0:
            return await self._abort(task, "episode made no model calls")
        if outcome.calls >= 0 and info.n_samples != outcome.calls:
            return await self._abort(
                task, f"{outcome.calls} model calls but {info.n_samples} samples recorded"
            )
        return None

    async def _submit_to_pool(self, task: Task, outcome: EpisodeOutcome) -> str:
        if refused := await self._check_recorded(task, outcome):
            return refused
        try:
            await self._pool(
                self.pool.set_reward,
                task.id,
                outcome.reward,
                outcome.step_rewards or None,
                outcome.metrics,
                attempt=task.attempt,
            )
            await self._pool(self.pool.finish, task.id, attempt=task.attempt)
        except StaleTaskError:
            return "lease_lost"
        except ValueError as exc:  # e.g. step rewards not aligned with the recorded samples
            return await self._abort(task, f"pool refused the episode: {exc}")
        return "finished"

    async def _abort(self, task: Task, reason: str) -> str:
        log.info("worker %s: aborting %s (attempt %d): %s", self.worker_id, task.id, task.attempt, reason)
        try:
            status = await self._pool(self.pool.abort, task.id, reason, attempt=task.attempt)
        except StaleTaskError:
            return "lease_lost"
        return "failed" if str(status) == "failed" else "aborted"

    async def _fail(self, task: Task, reason: str) -> str:
        log.warning("worker %s: failing %s: %s", self.worker_id, task.id, reason)
        try:
            await self._pool(self.pool.fail, task.id, reason)
        except StaleTaskError:
            return "lease_lost"
        return "failed"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _error_code(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
    except ValueError:
        return ""
    return str(err.get("code") or "") if isinstance(err, dict) else ""
