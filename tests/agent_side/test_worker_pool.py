"""EnvWorker against the real data pool, for the failures that happen before any model call:
unknown environment, an environment that cannot be built, an unreachable gateway."""

import asyncio
from typing import ClassVar

from agent_side.env import EnvConfig, Environment
from agent_side.registry import register_env
from agent_side.worker import EnvWorker
from data_pool import TaskStatus
from forge.ground.types import Task

DEAD_GATEWAY = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


class Unbuildable(Environment):
    config_class: ClassVar[type[EnvConfig]] = EnvConfig

    def __init__(self, config, task):
        raise RuntimeError("no such dataset shard")


register_env("unbuildable_test", Unbuildable)


def _run(worker: EnvWorker, **kwargs) -> dict:
    try:
        return asyncio.run(worker.run(**kwargs))
    finally:
        worker.close()


def test_bad_tasks_are_failed_or_retried_and_the_worker_keeps_going(make_pool) -> None:
    pool = make_pool(max_attempts=2, max_in_flight=4)
    tasks = [Task(id=f"nope{i}", env="no_such_env") for i in range(3)]
    tasks += [Task(id=f"unb{i}", env="unbuildable_test") for i in range(3)]
    tasks += [
        Task(id=f"ari{i}", env="arithmetic", payload={"question": "1+1?", "answer": "2"}) for i in range(3)
    ]
    pool.submit(tasks)
    worker = EnvWorker(pool, DEAD_GATEWAY, "w0", concurrency=3, poll_s=0.05)
    stats = _run(worker, idle_exit_s=0.5)

    infos = {t.id: pool.task_status(t.id) for t in tasks}
    assert all(info.status == TaskStatus.FAILED for info in infos.values()), infos
    for i in range(3):
        assert "unknown environment 'no_such_env'" in infos[f"nope{i}"].error
        assert infos[f"nope{i}"].attempt == 0  # failed at once: no worker could ever run it
        assert "no such dataset shard" in infos[f"unb{i}"].error
        assert infos[f"unb{i}"].attempt == 1  # both attempts used
        assert "gateway unreachable" in infos[f"ari{i}"].error
    assert stats["failed"] == 9 and stats["aborted"] == 6
    assert pool.counts()["failed"] == 9 and pool.counts()["in_flight"] == 0


def test_worker_stops_on_request(pool) -> None:
    pool.submit([Task(id=f"t{i}", env="no_such_env") for i in range(2)])

    async def main() -> dict:
        worker = EnvWorker(pool, DEAD_GATEWAY, "w1", concurrency=2, poll_s=0.05)
        run = asyncio.create_task(worker.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if pool.counts()["failed"] == 2:
                break
        worker.stop()
        stats = await asyncio.wait_for(run, 5)
        worker.close()
        return stats

    assert asyncio.run(main())["failed"] == 2
