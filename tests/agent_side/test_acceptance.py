"""Acceptance with real Ray actors, the real pool, gateway and built-in engine (tiny model):
50 episodes of each built-in environment, and kill -9 of a worker mid-run."""

import math
import os
import signal
import time
from pathlib import Path

import pytest

from agent_side.ray_worker import start_env_workers
from agent_side.tasks import make_tasks
from data_pool import TaskStatus
from forge.ground.types import Task

pytestmark = pytest.mark.slow
HELPERS = str(Path(__file__).with_name("helper_envs.py"))


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_fifty_episodes_of_each_environment_on_ray(
    ray_local, make_pool, make_gateway, random_engine, random_model_dir, make_consumer, wait_terminal
) -> None:
    ray = ray_local
    pool = make_pool(max_in_flight=32)
    gw = make_gateway(random_engine, random_model_dir, pool)
    short = {"max_tokens": 12}
    configs = {
        "arithmetic": short,
        "calculator": {**short, "max_turns": 3},
        "react": {**short, "mode": "function"},
    }
    tasks: list[Task] = []
    for env, cfg in configs.items():
        tasks += make_tasks(env, 25, seed=3, group_size=2, config=cfg)
    pool.submit(tasks)
    consumer = make_consumer(pool, batch=8)
    actors = start_env_workers(2, pool.url, gw.url, pool.cfg, concurrency=8, env_configs=configs, poll_s=0.2)
    runs = [a.run.remote(idle_exit_s=3.0) for a in actors]
    ray.get([a.pid.remote() for a in actors])
    assert ray.available_resources().get("CPU") == 2.0  # the workers reserve no CPU (num_cpus=0)
    infos = wait_terminal(pool, [t.id for t in tasks], 240)
    stats = ray.get(runs, timeout=60)
    _wait_for(lambda: len(consumer.episodes) == len(tasks), 30, "the consumer to take every episode")
    consumer.stop()

    assert {i.status for i in infos.values()} == {TaskStatus.COMPLETED}, [
        i for i in infos.values() if i.error
    ][:3]
    assert sum(s.get("finished", 0) for s in stats) == 150 and all(s.get("finished", 0) > 0 for s in stats)
    episodes = {e.task.id: e for e in consumer.episodes}
    assert len(episodes) == 150
    for ep in episodes.values():
        assert ep.samples, ep.task.id
        assert all(len(s.completion_ids) == len(s.logprobs) > 0 for s in ep.samples)
        assert math.isfinite(ep.reward) and "accuracy" in ep.metrics  # the reward call reached the pool
        assert len({s.session_id for s in ep.samples}) == 1
        if ep.task.env == "calculator":
            assert len(ep.step_rewards["process"]) == len(ep.samples)
        if ep.task.env == "arithmetic":
            assert len(ep.samples) == 1


def test_kill_9_of_a_worker_mid_run_loses_and_duplicates_nothing(
    ray_local, make_pool, make_gateway, random_engine, random_model_dir, make_consumer, wait_terminal
) -> None:
    ray = ray_local
    pool = make_pool(lease_timeout_s=2.0, max_attempts=3, max_in_flight=16)
    gw = make_gateway(random_engine, random_model_dir, pool)
    tasks = [Task(id=f"k{i}", env="test_turns", payload={"turns": 2, "sleep_s": 0.4}) for i in range(40)]
    pool.submit(tasks)
    consumer = make_consumer(pool, batch=4)
    cfg = {"test_turns": {"max_tokens": 8}}
    victim, survivor = start_env_workers(
        2, pool.url, gw.url, pool.cfg, concurrency=4, env_configs=cfg, env_modules=[HELPERS], poll_s=0.1
    )
    victim_pid = ray.get(victim.pid.remote())
    runs = [victim.run.remote(), survivor.run.remote(idle_exit_s=5.0)]
    _wait_for(lambda: pool.counts()["completed"] >= 6, 120, "some tasks to complete")
    _wait_for(lambda: ray.get(victim.stats.remote())["in_flight"] >= 2, 30, "the victim to hold episodes")
    held = [
        t
        for t in tasks
        if (i := pool.task_status(t.id)).status == TaskStatus.RUNNING and i.worker == "env-worker-0"
    ]
    os.kill(victim_pid, signal.SIGKILL)
    assert held, "the victim held no task when killed"

    infos = wait_terminal(pool, [t.id for t in tasks], 180)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(runs[0], timeout=30)
    survivor_stats = ray.get(runs[1], timeout=60)
    _wait_for(
        lambda: len(consumer.episodes) == sum(i.status == TaskStatus.COMPLETED for i in infos.values()),
        30,
        "episodes",
    )
    consumer.stop()

    statuses = {i.status for i in infos.values()}
    assert statuses <= {TaskStatus.COMPLETED, TaskStatus.FAILED}, statuses  # nothing lost or stuck
    completed = [t for t, i in infos.items() if i.status == TaskStatus.COMPLETED]
    episode_ids = [e.task.id for e in consumer.episodes]
    assert sorted(episode_ids) == sorted(completed)  # each completed task trained exactly once
    for ep in consumer.episodes:  # no sample of the killed attempt leaks into the retried one
        assert len(ep.samples) == 2 and [s.turn for s in ep.samples] == [0, 1]
        assert len({s.session_id for s in ep.samples}) == 1
        assert len(ep.step_rewards["process"]) == 2
    for t in held:  # the victim's episodes were retried (attempt ≥ 1) by the survivor
        assert infos[t.id].attempt >= 1 and infos[t.id].worker == "env-worker-1", infos[t.id]
        assert "attempt 0: lease expired (worker env-worker-0)" in infos[t.id].error, infos[t.id]
    assert survivor_stats.get("finished", 0) >= len(held)
