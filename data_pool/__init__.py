"""The data pool: Redis store for tasks, samples and rewards, and the windowed-FIFO scheduler.

from data_pool import PoolConfig, connect, Scheduler
pool = connect(PoolConfig(run_dir="runs/x"))          # embedded redis-server
pool.submit(tasks); t = pool.acquire_task("w0", timeout=1.0)
pool.open_session(t.id, "s1"); pool.append_sample(sample)
pool.set_reward(t.id, 1.0); pool.finish(t.id, attempt=t.attempt)
sched = Scheduler(pool); batch = sched.next_batch(8); ...train...; sched.ack(batch)
"""

from data_pool.config import PoolConfig
from data_pool.errors import (
    ClaimLostError,
    CodecError,
    DuplicateTaskError,
    PoolError,
    RedisServerError,
    RedisUnavailable,
    StaleTaskError,
    UnknownTaskError,
)
from data_pool.scheduler import Batch, Scheduler
from data_pool.server import EmbeddedRedis, find_redis_server
from data_pool.status import TaskInfo, TaskStatus
from data_pool.store import DataPool, connect

__all__ = [
    "Batch",
    "ClaimLostError",
    "CodecError",
    "DataPool",
    "DuplicateTaskError",
    "EmbeddedRedis",
    "PoolConfig",
    "PoolError",
    "RedisServerError",
    "RedisUnavailable",
    "Scheduler",
    "StaleTaskError",
    "TaskInfo",
    "TaskStatus",
    "UnknownTaskError",
    "connect",
    "find_redis_server",
]
