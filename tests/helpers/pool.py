"""Helpers for tests that use the data pool: build tasks and samples, play a worker."""

from __future__ import annotations

from forge.ground.types import Sample, Task


def make_tasks(n: int, group_size: int = 1, prefix: str = "t") -> list[Task]:
    """n tasks; with group_size > 1, consecutive runs of group_size share a group id."""
    return [
        Task(
            id=f"{prefix}{i}",
            env="echo",
            payload={"i": i},
            group_id=f"{prefix}g{i // group_size}" if group_size > 1 else "",
            group_size=group_size,
        )
        for i in range(n)
    ]


def make_sample(task_id: str, session_id: str, turn: int = 0, n: int = 3, weight_version: int = 0) -> Sample:
    return Sample(
        task_id=task_id,
        session_id=session_id,
        turn=turn,
        prompt_ids=[1, 2, 3, 2**31 - 1],
        completion_ids=list(range(n)),
        logprobs=[-0.5] * n,
        weight_version=weight_version,
    )


def complete(pool, task: Task, reward: float = 1.0, turns: int = 1, weight_version: int = 0) -> None:
    """What a worker + gateway do for one acquired task: session, samples, reward, finish."""
    sid = f"s-{task.id}-{task.attempt}"
    pool.open_session(task.id, sid)
    for turn in range(turns):
        pool.append_sample(make_sample(task.id, sid, turn, weight_version=weight_version))
    pool.set_reward(task.id, reward)
    pool.finish(task.id, attempt=task.attempt)


def acquire_all(pool, worker: str = "w") -> list[Task]:
    """Acquire until the in-flight bound or the queue stops us."""
    out = []
    while (t := pool.acquire_task(worker, timeout=0)) is not None:
        out.append(t)
    return out
