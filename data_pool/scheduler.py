"""The windowed-FIFO scheduler (ALGORITHMS.md §2): the trainer's side of the data pool.

Queue Q = tasks in seq order; head = the lowest seq not yet consumed (claimed, failed or
dropped). A ready group (all members finished) may be claimed iff all its members lie in
[head, head + W) — greedy inside the window, never beyond; the group holding the head is always
eligible (so a group larger than W cannot deadlock). The head slides only as it is consumed.
Head, window and batch counter live in Redis, so a restarted trainer continues.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pool.store import DataPool
from forge.types import Episode


@dataclass
class Batch:
    """Episodes claimed for one train step. Members of a group are contiguous and never split."""

    id: str
    episodes: list[Episode]
    weight_version: int  # trainer weight version when claimed
    # per batch: out_of_order_{mean,max} (seq − head, tasks), lag_tasks_{mean,max} (newest acquired
    # seq − seq), lag_versions_{mean,max} (weight version − oldest sample's), wait_s_{mean,max}
    # (claimed − finished), head, window, dropped_stale, failed, n_episodes, n_groups
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def groups(self) -> list[list[Episode]]:
        """Episodes grouped by group id (singletons for tasks without one), in batch order."""
        raise NotImplementedError

    @property
    def task_ids(self) -> list[str]:
        return [e.task.id for e in self.episodes]


class Scheduler:
    """Claims batches for one consumer. `consumer_id` names it; a new Scheduler with the same
    id recovers the claims of its dead predecessor (recover=True)."""

    def __init__(self, pool: DataPool, consumer_id: str = "trainer", recover: bool = True) -> None:
        raise NotImplementedError

    def next_batch(self, n: int, timeout: float | None = None) -> Batch:
        """Claim up to n episodes, whole groups only, in seq order among eligible ready groups.
        Returns when n are claimed, when the next eligible group does not fit in what is left (a
        first group larger than n is taken whole), or at `timeout` (None: wait forever) with
        what was claimed so far (possibly an empty batch, which needs no ack)."""
        raise NotImplementedError

    def ack(self, batch: Batch) -> None:
        """After a successful train step: its tasks become `completed`. ClaimLostError if the
        claim was recovered meanwhile (the batch will be — or was — handed out again)."""
        raise NotImplementedError

    def nack(self, batch: Batch, reason: str = "") -> None:
        """Give the batch back (train step failed): its tasks are ready again at their seq."""
        raise NotImplementedError

    def touch(self, batch: Batch) -> None:
        """Extend the claim of a batch whose train step outlasts claim_timeout_s."""
        raise NotImplementedError

    def recover(self, consumer_id: str | None = None) -> int:
        """Return to the ready set the claims of `consumer_id` (None: every expired claim);
        returns the number of batches recovered."""
        raise NotImplementedError

    def set_weight_version(self, version: int) -> None:
        """Same as DataPool.set_weight_version."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Cumulative metrics of this scheduler: batches, episodes, means/maxima of the batch
        metrics, plus the pool's counts."""
        raise NotImplementedError

    @property
    def head(self) -> int:
        """The lowest seq not yet consumed."""
        raise NotImplementedError

    @property
    def window(self) -> int | None:
        """W in tasks (None = unbounded)."""
        raise NotImplementedError
