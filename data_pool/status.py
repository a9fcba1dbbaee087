"""Task statuses and the read-only view of one task that status queries return."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TaskStatus(enum.StrEnum):
    """Life of a task in the pool.

    pending → running (acquired, leased to a worker) → done (finished, waiting for its group and
    the scheduler) → claimed (in a batch handed to the trainer) → completed (batch acked: trained).
    abort / lease expiry: running → pending (same seq, attempt + 1) or → failed after max_attempts.
    dropped: too stale, or its group was dropped under group_failure="drop".
    A batch nack or the recovery of a dead consumer's claim: claimed → done.
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    FAILED = "failed"
    DROPPED = "dropped"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DROPPED)


@dataclass(frozen=True)
class TaskInfo:
    """What the pool knows about one task (no samples)."""

    id: str
    status: TaskStatus
    seq: int
    attempt: int  # 0-based number of the current (or last) attempt
    group_id: str
    group_size: int
    worker: str  # worker holding (or last holding) the lease; "" if never acquired
    error: str  # reasons of aborts / failure / drop, newest last, "; "-joined
    n_samples: int
    batch_id: str  # batch that claimed it ("" if none)
