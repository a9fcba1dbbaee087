"""EnvWorker (plain asyncio, no Ray) against the real pool, gateway and built-in engine:
multi-turn episodes with per-step rewards, environment failures, timeouts, leases, the in-flight bound."""

import asyncio
import math
import threading
import time
from pathlib import Path

import pytest

from agent_side.registry import load_env_modules
from agent_side.worker import EnvWorker
from data_pool import TaskStatus
from forge.ground.types import Task

HELPERS = str(Path(__file__).with_name("helper_envs.py"))
load_env_modules([HELPERS])  # registers test_turns, test_slow, test_raises, test_bad_reward, test_hangs
SHORT = {"max_tokens": 8, "temperature": 1.0}


def _run(worker: EnvWorker, **kwargs) -> dict:
    try:
        return asyncio.run(worker.run(**kwargs))
    finally:
        worker.close()


@pytest.fixture
def random_gateway(make_gateway, random_engine, random_model_dir, pool):
    return make_gateway(random_engine, random_model_dir, pool)


def test_multi_turn_episodes_carry_aligned_step_rewards(
    pool, random_gateway, make_consumer, wait_terminal
) -> None:
    tasks = [Task(id=f"m{i}", env="test_turns", payload={"turns": 3}) for i in range(4)]
    pool.submit(tasks)
    consumer = make_consumer(pool)
    stats = _run(
        EnvWorker(pool, random_gateway.url, "w", concurrency=4, env_configs={"test_turns": SHORT}),
        idle_exit_s=0.5,
    )
    assert stats == {"finished": 4}
    infos = wait_terminal(pool, [t.id for t in tasks], 20)
    assert {i.status for i in infos.values()} == {TaskStatus.COMPLETED}
    consumer.stop()
    assert sorted(e.task.id for e in consumer.episodes) == [t.id for t in tasks]
    for ep in consumer.episodes:
        assert [s.turn for s in ep.samples] == [0, 1, 2] and len({s.session_id for s in ep.samples}) == 1
        assert ep.reward == 1.0 and ep.metrics["turns"] == 3.0
        assert ep.metrics["episode_s"] > 0, "the worker times each episode"
        assert ep.step_rewards == {"process": pytest.approx([0.1, 0.2, 0.3])}
        for a, b in zip(ep.samples, ep.samples[1:], strict=False):  # token-exact multi-turn prompts
            assert (
                b.prompt_ids[: len(a.prompt_ids) + len(a.completion_ids)] == a.prompt_ids + a.completion_ids
            )


def test_calculator_tool_episodes_through_the_worker(
    pool, make_gateway, tool_engine, tool_model_dir, make_consumer, calc_case
) -> None:
    gw = make_gateway(tool_engine, tool_model_dir, pool)
    expr, answer = calc_case
    pool.submit(
        [Task(id="calc", env="calculator", payload={"question": f"Compute {expr}.", "answer": answer})]
    )
    consumer = make_consumer(pool)
    cfg = {
        "calculator": {
            "max_turns": 4,
            "max_tokens": 64,
            "temperature": 0.0,
            "process_reward": 0.1,
            "speed_reward": 0.5,
        }
    }
    assert _run(EnvWorker(pool, gw.url, "w", env_configs=cfg), idle_exit_s=0.5) == {"finished": 1}
    for _ in range(100):
        if consumer.episodes:
            break
        time.sleep(0.1)
    consumer.stop()
    (ep,) = consumer.episodes
    assert len(ep.samples) == 4 and ep.reward == 0.0 and ep.metrics["truncated"] == 1.0
    assert ep.step_rewards == {"process": pytest.approx([0.1, 0.1, 0.0, 0.0])}


FAILING = [
    ("raise", "test_raises", {}, "Raises.step raised ValueError: env exploded on purpose"),
    ("str_reward", "test_bad_reward", {"reward": "high"}, "step 0 reward is str 'high', not a number"),
    ("none_reward", "test_bad_reward", {"reward": None}, "step 0 reward is NoneType"),
    ("nan_reward", "test_bad_reward", {"reward": math.nan}, "step 0 reward is nan"),
    ("bool_reward", "test_bad_reward", {"reward": True}, "step 0 reward is bool"),
    ("hang_step", "test_hangs", {}, "Hangs.step did not return within 0.5s"),
    ("hang_reset", "test_hangs", {"where": "reset"}, "Hangs.reset did not return within 0.5s"),
    ("slow_episode", "test_slow", {"turns": 2, "sleep_s": 5}, "episode timed out after 1.5s"),
]


def test_env_failures_abort_retry_then_fail_and_the_worker_keeps_running(
    make_pool, make_gateway, random_engine, random_model_dir, make_consumer, wait_terminal
) -> None:
    pool = make_pool(max_attempts=2)
    gw = make_gateway(random_engine, random_model_dir, pool)
    bad = [Task(id=name, env=env, payload=payload) for name, env, payload, _ in FAILING]
    good = [Task(id=f"ok{i}", env="test_turns", payload={"turns": 1}) for i in range(4)]
    pool.submit(bad[:4] + good[:2] + bad[4:] + good[2:])  # good work before, between and after failures
    consumer = make_consumer(pool)
    cfg = {"max_tokens": 8, "step_timeout_s": 0.5}
    worker = EnvWorker(
        pool,
        gw.url,
        "w",
        concurrency=4,
        env_configs={
            **{env: cfg for env in ("test_raises", "test_bad_reward", "test_hangs")},
            "test_slow": {**cfg, "step_timeout_s": 10, "episode_timeout_s": 1.5},
            "test_turns": {"max_tokens": 8},  # the good tasks: default timeouts
        },
    )
    start = time.monotonic()
    stats = _run(worker, idle_exit_s=0.5)
    assert time.monotonic() - start < 60
    infos = wait_terminal(pool, [t.id for t in bad + good], 20)
    for name, _, _, reason in FAILING:
        info = infos[name]
        assert info.status == TaskStatus.FAILED and info.attempt == 1, info
        assert info.error.count(reason) == 2, (name, info.error)  # recorded for both attempts
    assert all(infos[t.id].status == TaskStatus.COMPLETED for t in good)
    assert stats == {"aborted": len(FAILING), "failed": len(FAILING), "finished": len(good)}
    consumer.stop()


def test_heartbeats_keep_long_episodes_and_a_stalled_worker_loses_them(
    make_pool, make_gateway, random_engine, random_model_dir, wait_terminal
) -> None:
    pool = make_pool(lease_timeout_s=2.0, max_attempts=2)
    gw = make_gateway(random_engine, random_model_dir, pool)
    cfg = {"test_turns": {"max_tokens": 8, "step_timeout_s": 10}}
    pool.submit([Task(id="long", env="test_turns", payload={"turns": 2, "sleep_s": 1.6})])
    assert _run(EnvWorker(pool, gw.url, "w", env_configs=cfg, heartbeat_s=0.3), idle_exit_s=0.5) == {
        "finished": 1
    }
    assert pool.task_status("long").attempt == 0  # 3.2 s of episode on a 2 s lease, never lost

    pool.submit([Task(id="stalled", env="test_turns", payload={"turns": 2, "sleep_s": 1.6})])
    stats = _run(EnvWorker(pool, gw.url, "w2", env_configs=cfg, heartbeat_s=60), idle_exit_s=2)
    info = wait_terminal(pool, ["stalled"], 20)["stalled"]
    assert stats == {"lease_lost": 2} and info.status == TaskStatus.FAILED and info.attempt == 1


def test_the_pool_in_flight_bound_holds_whatever_the_concurrency(
    make_pool, make_gateway, random_engine, random_model_dir, make_consumer, wait_terminal
) -> None:
    pool = make_pool(max_in_flight=3)
    gw = make_gateway(random_engine, random_model_dir, pool)
    tasks = [Task(id=f"b{i}", env="test_turns", payload={"turns": 1, "sleep_s": 0.3}) for i in range(12)]
    pool.submit(tasks)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, pool.counts()["in_flight"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    make_consumer(pool, batch=1)  # frees in-flight slots as episodes finish
    stats = _run(
        EnvWorker(pool, gw.url, "w", concurrency=16, env_configs={"test_turns": SHORT}), idle_exit_s=1.5
    )
    wait_terminal(pool, [t.id for t in tasks], 20)
    stop.set()
    watcher.join()
    assert stats == {"finished": 12} and 1 <= peak <= 3
