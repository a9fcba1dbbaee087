"""`DataPool`: the Redis store of tasks, samples and rewards (producer side and queries).

Writers: the launch driver `submit()`s tasks; env workers `acquire_task()` within the in-flight
bound, run the agent, `set_reward()` and `finish()` or `abort()`; the gateway `open_session()`s
and `append_sample()`s one Sample per model call. The trainer reads through `Scheduler`.
Every state change is one Lua script, so it is atomic; records are the shared msgpack codec.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_pool.config import PoolConfig
from data_pool.status import TaskInfo, TaskStatus
from forge.types import Sample, Task


class DataPool:
    """A connection to the pool's Redis. Thread-safe (redis-py's connection pool).

    Retry policy: an aborted (or lease-expired) task keeps its FIFO sequence number and goes back
    to the front of the pending queue, so it is retried first and keeps holding the window's
    head, exactly like a straggler would; after `max_attempts` tries it ends `failed`.
    """

    cfg: PoolConfig
    url: str

    def close(self) -> None:
        """Close the connection; in embedded mode also stop the redis-server this pool started."""
        raise NotImplementedError

    # -------------------------------------------------------------- producers: the launch driver
    def submit(self, tasks: Iterable[Task]) -> list[Task]:
        """Enqueue tasks; return copies with their FIFO `seq` assigned (in submission order, group
        members made contiguous). Every group must be submitted whole in one call (group_size
        members sharing group_id). Duplicate task or group ids → DuplicateTaskError, nothing written."""
        raise NotImplementedError

    # -------------------------------------------------------------- producers: env workers
    def acquire_task(self, worker_id: str, timeout: float | None = 0.0) -> Task | None:
        """Lease the oldest pending task to `worker_id`, waiting up to `timeout` seconds (None:
        forever) while the in-flight bound is reached or nothing is pending. Returns None on
        timeout. The lease expires after `lease_timeout_s` without `heartbeat()`; the task is then
        retried. A task whose stored record is malformed is marked failed and skipped."""
        raise NotImplementedError

    def heartbeat(self, task_id: str, attempt: int | None = None) -> None:
        """Extend the lease of a running task. StaleTaskError if it is no longer ours."""
        raise NotImplementedError

    def set_reward(
        self,
        task_id: str,
        reward: float,
        step_rewards: dict[str, list[float]] | None = None,
        metrics: dict[str, float] | None = None,
        attempt: int | None = None,
    ) -> None:
        """Attach the outcome reward, optional per-step rewards (one value per sample, checked at
        finish) and env metrics to a running task."""
        raise NotImplementedError

    def finish(self, task_id: str, attempt: int | None = None) -> None:
        """Mark a running task done; its group becomes ready when every member is done or ended.
        Passing `attempt` (the Task's) makes a worker whose lease was lost get StaleTaskError."""
        raise NotImplementedError

    def abort(self, task_id: str, reason: str, attempt: int | None = None) -> TaskStatus:
        """Give up the current attempt (its samples are discarded, the reason recorded); returns
        the new status: pending (retried, same seq) or failed (attempts exhausted)."""
        raise NotImplementedError

    def fail(self, task_id: str, reason: str) -> None:
        """Mark a task failed at once, whatever its attempts (e.g. bad input); terminal."""
        raise NotImplementedError

    # -------------------------------------------------------------- producers: the gateway
    def open_session(self, task_id: str, session_id: str) -> int:
        """Bind a gateway session to the task's current attempt; returns that attempt. A task may
        have several sessions (sub-agents). Samples of a session of an earlier attempt are refused."""
        raise NotImplementedError

    def append_sample(self, sample: Sample) -> None:
        """Record one model call under its task (call order kept). StaleTaskError if the session
        was not opened, belongs to an earlier attempt, or the task is not running."""
        raise NotImplementedError

    def append_samples(self, samples: Iterable[Sample]) -> None:
        """Pipelined `append_sample` for many samples (one round trip); all-or-error per sample."""
        raise NotImplementedError

    def append_sample_bytes(self, raw: bytes) -> None:
        """Record an already-encoded Sample (e.g. from a non-Python producer). A malformed or
        wrong-version record raises CodecError and, when its task can be identified, marks that
        task failed with the reason; nothing else is touched."""
        raise NotImplementedError

    # -------------------------------------------------------------- queries
    def task_status(self, task_id: str) -> TaskInfo:
        """Status, seq, attempt, error, ... of one task; UnknownTaskError if never submitted."""
        raise NotImplementedError

    def statuses(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        """Status of many tasks in one round trip."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Number of tasks per TaskStatus value (all statuses present, zeros included), plus
        `submitted`, `in_flight` (running + done), `dropped_stale`, `retries`, `malformed`."""
        raise NotImplementedError

    def samples(self, task_id: str, session_id: str | None = None) -> list[Sample]:
        """The samples recorded for the task's current attempt (optionally one session's)."""
        raise NotImplementedError

    def weight_version(self) -> int:
        """The trainer's current weight version (0 until set)."""
        raise NotImplementedError

    def set_weight_version(self, version: int) -> None:
        """Report the trainer's current weight version (staleness is measured against it)."""
        raise NotImplementedError

    def reap_expired(self) -> int:
        """Retry (or fail) tasks whose lease expired; returns how many. acquire_task and the
        scheduler call it too, so nobody has to."""
        raise NotImplementedError


def connect(cfg: PoolConfig | None = None) -> DataPool:
    """Connect to `cfg.redis_url`, or start an embedded redis-server in `cfg.run_dir` when it is
    None. Unreachable → RedisUnavailable naming the URL within ~connect_timeout_s."""
    raise NotImplementedError
