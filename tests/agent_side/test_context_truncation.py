"""An episode whose next call no longer fits the model's context ends truncated (its calls so far
are trained on, `context_truncated` counts it), never a hang or an endless retry; one whose first
call does not fit fails at once. `lookup_chain` (16+ calls, one ~64-token record per call) over a
gateway with a 512-token context, as `forge launch env=lookup_chain` without a bigger context."""

import asyncio
import time

from agent_side.tasks import make_tasks
from agent_side.worker import EnvWorker
from data_pool import TaskStatus
from forge.feeder import batch_metrics

SETTINGS = {"min_calls": 16, "max_calls": 16, "max_turns": 16, "observation_tokens": 64, "max_tokens": 8}


def _run(worker: EnvWorker) -> dict:
    try:
        return asyncio.run(worker.run(idle_exit_s=0.5))
    finally:
        worker.close()


def test_lookup_chain_in_a_small_context_ends_truncated_with_its_samples(
    make_pool, make_gateway, random_engine, random_model_dir, make_consumer, wait_terminal
) -> None:
    pool = make_pool(max_attempts=3)
    gw = make_gateway(random_engine, random_model_dir, pool, context_length=512)
    tasks = make_tasks("lookup_chain", 2, 0, 1, SETTINGS)
    pool.submit(tasks)
    consumer = make_consumer(pool, batch=2)
    started = time.monotonic()
    stats = _run(EnvWorker(pool, gw.url, "w", concurrency=2, env_configs={"lookup_chain": SETTINGS}))
    assert stats == {"finished": 2}, stats
    infos = wait_terminal(pool, [t.id for t in tasks], 20)
    assert {i.status for i in infos.values()} == {TaskStatus.COMPLETED}
    assert all(i.attempt == 0 for i in infos.values()), "no retry"
    assert pool.counts()["retries"] == 0
    for _ in range(100):
        if len(consumer.episodes) == 2:
            break
        time.sleep(0.1)
    consumer.stop()
    assert len(consumer.episodes) == 2
    for ep in consumer.episodes:
        # a few calls fit in 512 tokens, far fewer than the chain's 16
        assert 1 <= len(ep.samples) < 16, len(ep.samples)
        assert ep.metrics["truncated"] == 1.0 and ep.metrics["context_truncated"] == 1.0
        assert ep.reward == 0.0
        last = ep.samples[-1]
        assert len(last.prompt_ids) + len(last.completion_ids) <= 512
    print(f"2 truncated lookup_chain episodes in {time.monotonic() - started:.1f} s")

    class Batch:  # what batch_metrics reads of a scheduler Batch
        episodes = consumer.episodes
        metrics: dict = {}

    metrics = batch_metrics(Batch, {}, {}, pool.counts(), 1.0)
    assert metrics["rollout/truncated"] == 2 and metrics["rollout/context_truncated"] == 2


def test_a_first_call_that_does_not_fit_fails_the_task_at_once(
    make_pool, make_gateway, random_engine, random_model_dir, wait_terminal
) -> None:
    pool = make_pool(max_attempts=3)
    gw = make_gateway(random_engine, random_model_dir, pool, context_length=64)
    (task,) = make_tasks("lookup_chain", 1, 0, 1, SETTINGS)
    pool.submit([task])
    stats = _run(EnvWorker(pool, gw.url, "w", env_configs={"lookup_chain": SETTINGS}))
    assert stats == {"failed": 1}, stats
    info = wait_terminal(pool, [task.id], 10)[task.id]
    assert info.status == TaskStatus.FAILED and info.attempt == 0 and pool.counts()["retries"] == 0
    assert "model call 0 does not fit the model's context" in info.error, info.error
    assert "maximum context length is 64 tokens" in info.error
