"""The windowed-FIFO scheduler (ALGORITHMS.md §2): the trainer's side of the data pool.

Queue Q = tasks in seq order; head = the lowest seq not yet consumed (claimed, failed or
dropped). A ready group (all members finished) may be claimed iff all its members lie in
[head, head + W) — greedy inside the window, never beyond; the group holding the head is always
eligible (so a group larger than W cannot deadlock). The head slides only as it is consumed,
also within one batch. Head, window and the batch counter live in Redis, so a restarted trainer
continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from data_pool.errors import CodecError
from data_pool.store import DataPool
from forge.ground.types import Episode

log = logging.getLogger(__name__)

_MAINTENANCE_S = 1.0  # how often next_batch recovers expired claims and leases


@dataclass(frozen=True)
class ClaimInfo:
    """How one episode was scheduled."""

    task_id: str
    seq: int
    head: int  # head when it was claimed; out-of-order distance = seq − head
    lag_tasks: int  # newest seq acquired by any worker − seq
    lag_versions: int  # trainer weight version − oldest weight version among its samples
    wait_s: float  # claimed − finished

    @property
    def out_of_order(self) -> int:
        return self.seq - self.head


@dataclass
class Batch:
    """Episodes claimed for one train step. Members of a group are contiguous and never split."""

    id: str
    episodes: list[Episode]
    weight_version: int  # trainer weight version when claimed
    claims: list[ClaimInfo] = field(default_factory=list)  # aligned with episodes
    # out_of_order_{mean,max}, lag_tasks_{mean,max}, lag_versions_{mean,max}, wait_s_{mean,max},
    # head, window (−1 = unbounded), dropped_stale, failed, n_episodes, n_groups
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def groups(self) -> list[list[Episode]]:
        """Episodes grouped by group id (singletons for tasks without one), in batch order."""
        out: dict[str, list[Episode]] = {}
        for e in self.episodes:
            out.setdefault(e.task.group_id or f"\x00{e.task.id}", []).append(e)
        return list(out.values())

    @property
    def task_ids(self) -> list[str]:
        return [e.task.id for e in self.episodes]

    def __len__(self) -> int:
        return len(self.episodes)


class Scheduler:
    """Claims batches for one consumer. `consumer_id` names it; a new Scheduler with the same
    id recovers the claims of its dead predecessor (recover=True). Claims of any consumer that
    neither acks nor touches them within claim_timeout_s are recovered by every Scheduler."""

    def __init__(self, pool: DataPool, consumer_id: str = "trainer", recover: bool = True) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.consumer_id = consumer_id
        self._w = self.cfg.effective_window()
        self._sched_key = f"{pool.p}:sched"
        stored = pool._call(pool.client.hget, self._sched_key, "window")
        wire = -1 if self._w is None else self._w
        if stored is not None and int(stored) != wire:
            log.warning("data pool window changes from %s (stored) to %s (config)", int(stored), wire)
        pool._call(pool.client.hset, self._sched_key, mapping={"window": wire, "mode": self.cfg.mode})
        self._totals: dict[str, float] = {}
        self._last_maintenance = 0.0
        if recover:
            n = self.recover(consumer_id)
            if n:
                log.warning("recovered %d unacknowledged batch(es) of consumer %r", n, consumer_id)

    # ------------------------------------------------------------------ claiming
    def next_batch(self, n: int, timeout: float | None = None) -> Batch:
        """Claim up to n episodes, whole groups only, in seq order among eligible ready groups.
        Returns when n are claimed, when the next eligible group does not fit in what is left (a
        first group larger than n is taken whole), or at `timeout` (None: wait forever) with
        what was claimed so far (possibly an empty batch, which needs no ack)."""
        if n < 1:
            raise ValueError(f"next_batch(n={n}): n must be ≥ 1")
        pool, cfg = self.pool, self.cfg
        counter = pool._call(pool.client.hincrby, self._sched_key, "batches", 1)
        bid = f"{self.consumer_id}-{counter}"
        deadline = None if timeout is None else time.monotonic() + timeout
        episodes: dict[str, Episode] = {}
        claims: list[ClaimInfo] = []
        dropped_stale = failed = 0
        wv = pool.weight_version()
        delay = 0.002
        while True:
            self._maintenance(bid if episodes else None)
            res = pool._run(
                "claim",
                n - len(episodes),
                -1 if self._w is None else self._w,
                bid,
                self.consumer_id,
                int(cfg.claim_timeout_s * 1000),
                -1 if cfg.max_staleness is None else cfg.max_staleness,
                cfg.group_failure,
            )
            wv, max_acq, now_ms, stale, stop = (
                int(res[0]),
                int(res[1]),
                int(res[2]),
                int(res[3]),
                res[5].decode(),
            )
            dropped_stale += stale
            k = int(res[6])
            got = [res[7 + 6 * i : 13 + 6 * i] for i in range(k)]
            if got:
                ids = [g[0].decode() for g in got]
                loaded = pool.load_episodes(ids)
                removed: set[str] = set()
                for tid, ep in loaded.items():
                    if isinstance(ep, CodecError) and tid not in removed:
                        gone = pool._run("reject", bid, tid, f"rejected at claim: {ep}", cfg.group_failure)
                        removed.update(x.decode() for x in gone)
                        failed += 1
                        log.error("data pool: task %s failed: %s", tid, ep)
                for tid, seq, minwv, fin_at, _gk, head in got:
                    tid = tid.decode()
                    if tid in removed:
                        continue
                    ep = loaded[tid]
                    assert isinstance(ep, Episode)
                    episodes[tid] = ep
                    claims.append(
                        ClaimInfo(
                            task_id=tid,
                            seq=int(seq),
                            head=int(head),
                            lag_tasks=max_acq - int(seq),
                            lag_versions=wv - int(minwv) if minwv else 0,
                            wait_s=(now_ms - int(fin_at)) / 1000 if fin_at else 0.0,
                        )
                    )
                if removed:
                    episodes = {t: e for t, e in episodes.items() if t not in removed}
                    claims = [c for c in claims if c.task_id not in removed]
                    continue  # refill what the rejects left
            if len(episodes) >= n or stop == "nofit" or (stop == "full" and got):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, 0.05)
        batch = Batch(id=bid, episodes=list(episodes.values()), weight_version=wv, claims=claims)
        batch.metrics = self._metrics(batch, dropped_stale, failed, int(res[4]))
        self._accumulate(batch)
        return batch

    def _maintenance(self, holding: str | None) -> None:
        now = time.monotonic()
        if now - self._last_maintenance >= _MAINTENANCE_S:
            self._last_maintenance = now
            if holding is not None:  # keep the claim of the batch being filled alive
                self.pool._run("touch", holding, self.consumer_id, int(self.cfg.claim_timeout_s * 1000))
            self.pool._run("recover", "expired", "", self.cfg.group_failure, self.cfg.max_attempts)

    def _metrics(self, batch: Batch, dropped_stale: int, failed: int, head: int) -> dict[str, float]:
        m: dict[str, float] = {
            "n_episodes": len(batch.episodes),
            "n_groups": len(batch.groups),
            "head": head,
            "window": -1 if self._w is None else self._w,
            "dropped_stale": dropped_stale,
            "failed": failed,
        }
        cols: dict[str, list[float]] = {
            "out_of_order": [c.out_of_order for c in batch.claims],
            "lag_tasks": [c.lag_tasks for c in batch.claims],
            "lag_versions": [c.lag_versions for c in batch.claims],
            "wait_s": [c.wait_s for c in batch.claims],
        }
        for name, xs in cols.items():
            m[f"{name}_mean"] = sum(xs) / len(xs) if xs else 0.0
            m[f"{name}_max"] = max(xs) if xs else 0.0
        return m

    def _accumulate(self, batch: Batch) -> None:
        t, m = self._totals, batch.metrics
        n = len(batch.episodes)
        t["batches"] = t.get("batches", 0) + (1 if n else 0)
        old = t.get("episodes", 0)
        t["episodes"] = old + n
        for k in ("dropped_stale", "failed"):
            t[k] = t.get(k, 0) + m[k]
        for name in ("out_of_order", "lag_tasks", "lag_versions", "wait_s"):
            if n:
                t[f"{name}_mean"] = (t.get(f"{name}_mean", 0.0) * old + m[f"{name}_mean"] * n) / (old + n)
                t[f"{name}_max"] = max(t.get(f"{name}_max", 0.0), m[f"{name}_max"])

    # ------------------------------------------------------------------ after the train step
    def ack(self, batch: Batch) -> None:
        """After a successful train step: its tasks become `completed`. ClaimLostError if the
        claim was recovered meanwhile (the batch will be — or was — handed out again)."""
        if not batch.episodes:
            return
        self.pool._run("ack", batch.id, self.consumer_id, "1" if self.cfg.retain_samples else "0")

    def nack(self, batch: Batch, reason: str = "") -> None:
        """Give the batch back (train step failed): its tasks are ready again at their seq."""
        if not batch.episodes:
            return
        self.pool._run("release", batch.id, self.consumer_id, reason or "nack", self.cfg.group_failure)

    def touch(self, batch: Batch) -> None:
        """Extend the claim of a batch whose train step outlasts claim_timeout_s."""
        if batch.episodes:
            self.pool._run("touch", batch.id, self.consumer_id, int(self.cfg.claim_timeout_s * 1000))

    def recover(self, consumer_id: str | None = None) -> int:
        """Return to the ready set the claims of `consumer_id` (None: every expired claim);
        returns the number of batches recovered. Also retries tasks whose lease expired."""
        mode = "expired" if consumer_id is None else "consumer"
        n, _ = self.pool._run(
            "recover", mode, consumer_id or "", self.cfg.group_failure, self.cfg.max_attempts
        )
        return int(n)

    def set_weight_version(self, version: int) -> None:
        """Same as DataPool.set_weight_version."""
        self.pool.set_weight_version(version)

    def stats(self) -> dict[str, float]:
        """Cumulative metrics of this scheduler (batches, episodes, means/maxima of the batch
        metrics) plus the pool's counts and the current head."""
        out: dict[str, float] = dict(self._totals)
        out.update({f"pool_{k}": v for k, v in self.pool.counts().items()})
        out["head"] = self.head
        return out

    @property
    def head(self) -> int:
        """The lowest seq not yet consumed (the next seq to assign if all are)."""
        pool = self.pool
        top = pool._call(pool.client.zrange, f"{pool.p}:open", 0, 0, withscores=True)
        if top:
            return int(top[0][1])
        return int(pool._call(pool.client.get, f"{pool.p}:seq") or 0)

    @property
    def window(self) -> int | None:
        """W in tasks (None = unbounded)."""
        return self._w
