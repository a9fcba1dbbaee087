"""A thin Ray actor around `EnvWorker`, for the launch driver.

    from agent_side.ray_worker import start_env_workers
    actors = start_env_workers(n=2, redis_url=pool.url, pool_config=pool.cfg,
                               gateway_url=gw_url, concurrency=8, env_configs={"arithmetic": {...}})
    refs = [a.run.remote() for a in actors]            # run until stop
    ray.get([a.stop.remote() for a in actors]); ray.get(refs)

The actors reserve no CPU (`num_cpus=0`): they mostly wait on HTTP, and on a small machine an actor
holding a CPU can starve the trainer into a silent hang. Each actor connects to the pool's Redis
by URL (never an embedded server of its own) and is an async actor, so `stats()` and `stop()` are
answered while `run()` is in progress. A dead actor's tasks are retried by the pool once their
leases expire; `max_restarts` is left to the caller (default 0: the driver decides).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import ray

from agent_side.worker import EnvWorker


class EnvWorkerActor:
    """Ray actor body (decorated by `env_worker_class`)."""

    def __init__(
        self,
        redis_url: str,
        gateway_url: str,
        worker_id: str,
        pool_config: dict[str, Any] | None = None,
        **worker_kwargs: Any,
    ) -> None:
        from data_pool import PoolConfig, connect

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        fields = {f.name for f in dataclasses.fields(PoolConfig)}
        cfg = {k: v for k, v in (pool_config or {}).items() if k in fields}
        cfg["redis_url"] = redis_url
        self.pool = connect(PoolConfig(**cfg))
        self.worker = EnvWorker(self.pool, gateway_url, worker_id, **worker_kwargs)

    async def run(self, max_episodes: int | None = None, idle_exit_s: float | None = None) -> dict[str, int]:
        return await self.worker.run(max_episodes=max_episodes, idle_exit_s=idle_exit_s)

    async def stop(self) -> None:
        self.worker.stop()

    async def stats(self) -> dict[str, Any]:
        return {**self.worker.stats, "in_flight": self.worker.in_flight, "worker_id": self.worker.worker_id}

    async def pid(self) -> int:
        return os.getpid()


def env_worker_class(**ray_options: Any) -> Any:
    """The Ray actor class, `num_cpus=0` unless overridden."""
    options = {"num_cpus": 0, "max_restarts": 0, **ray_options}
    return ray.remote(**options)(EnvWorkerActor)


def start_env_workers(
    n: int,
    redis_url: str,
    gateway_url: str,
    pool_config: Any = None,
    name_prefix: str = "env-worker",
    ray_options: dict[str, Any] | None = None,
    **worker_kwargs: Any,
) -> list[Any]:
    """Start `n` EnvWorker actors (ids "{name_prefix}-{i}"); `worker_kwargs` go to `EnvWorker`."""
    if dataclasses.is_dataclass(pool_config):
        pool_config = dataclasses.asdict(pool_config)
    actor_class = env_worker_class(**(ray_options or {}))
    return [
        actor_class.remote(redis_url, gateway_url, f"{name_prefix}-{i}", pool_config, **worker_kwargs)
        for i in range(n)
    ]
