"""Accuracy on a held-out set: run eval tasks against an unrecorded base URL (the gateway's
unscoped `/v1/...`, or any OpenAI-compatible server) and average the environments' verdicts.

    tasks = make_eval_set("arithmetic", 200)
    report = asyncio.run(evaluate(tasks, "http://127.0.0.1:8000", config={"temperature": 0.0}))
    report.accuracy, report.mean_reward, report.errors

Nothing is recorded in the pool, so evaluation never becomes training data.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from agent_side.registry import get_env, make_config
from agent_side.runner import run_episode
from forge.ground.types import Task


@dataclass
class EvalReport:
    n: int
    accuracy: float  # mean of the episodes' "accuracy" metric (reward > 0 where an env reports none)
    mean_reward: float
    errors: int  # episodes that could not be run (counted as wrong)
    per_task: dict[str, float] = field(default_factory=dict)  # task id → accuracy
    reasons: list[str] = field(default_factory=list)


async def evaluate(
    tasks: list[Task],
    base_url: str,
    config: dict[str, Any] | None = None,
    concurrency: int = 8,
    model: str = "default",
    api_key: str = "forge",
) -> EvalReport:
    """Run every task once (at most `concurrency` at a time) and report accuracy."""
    gate = asyncio.Semaphore(max(1, concurrency))
    per_task: dict[str, float] = {}
    rewards: list[float] = []
    reasons: list[str] = []

    async def one(task: Task) -> None:
        async with gate:
            try:
                env = get_env(task.env).env_class(make_config(task.env, config), task)
                outcome = await asyncio.wait_for(
                    run_episode(env, base_url, api_key, model), env.config.episode_timeout_s
                )
            except Exception as exc:  # EpisodeError, a timeout, an env that cannot be built
                reasons.append(f"{task.id}: {type(exc).__name__}: {exc}")
                per_task[task.id] = 0.0
                rewards.append(0.0)
                return
        rewards.append(outcome.reward)
        per_task[task.id] = outcome.metrics.get("accuracy", float(outcome.reward > 0))

    await asyncio.gather(*(one(t) for t in tasks))
    n = len(tasks)
    return EvalReport(
        n=n,
        accuracy=sum(per_task.values()) / n if n else 0.0,
        mean_reward=sum(rewards) / n if n else 0.0,
        errors=len(reasons),
        per_task=per_task,
        reasons=reasons,
    )
