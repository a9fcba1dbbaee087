"""`DataPool`: the Redis store of tasks, samples and rewards (producer side and queries).

Writers: the launch driver `submit()`s tasks; env workers `acquire_task()` within the in-flight
bound, run the agent, `set_reward()` and `finish()` or `abort()`; the gateway `open_session()`s
and `append_sample()`s one Sample per model call. The trainer reads through `Scheduler`.
Every state change is one Lua script, so it is atomic; records are the shared msgpack codec.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from data_pool.config import PoolConfig
from data_pool.errors import CodecError, DuplicateTaskError, PoolError, RedisUnavailable, UnknownTaskError
from data_pool.keys import group_key, prefix
from data_pool.scripts import Scripts, translate
from data_pool.server import EmbeddedRedis
from data_pool.status import TaskInfo, TaskStatus
from forge.ground.types import Episode, Sample, Task, decode_sample, decode_task, encode

_SUBMIT_CHUNK = 2000  # tasks per submit script call (whole groups)


def redact(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class DataPool:
    """A connection to the pool's Redis. Thread-safe (redis-py's connection pool).

    Retry policy: an aborted (or lease-expired) task keeps its FIFO sequence number and goes back
    to the front of the pending queue, so it is retried first and keeps holding the window's
    head, exactly like a straggler would; after `max_attempts` tries it ends `failed`.
    Build one with `connect(cfg)`. Pickling (e.g. as a Ray actor argument) reconnects by URL.
    """

    def __init__(self, client: redis.Redis, cfg: PoolConfig, url: str, server: EmbeddedRedis | None = None):
        self.cfg = cfg
        self.url = url
        self.client = client
        self.server = server
        self.p = prefix(cfg.key_prefix)
        self.scripts = Scripts(client)
        self.scripts.load(client)
        self._lease_ms = str(int(cfg.lease_timeout_s * 1000))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reconnect, (replace(self.cfg, redis_url=self.url),))

    def __repr__(self) -> str:
        return f"DataPool({redact(self.url)!r}, prefix={self.cfg.key_prefix!r})"

    def close(self) -> None:
        """Close the connection; in embedded mode also stop the redis-server this pool started."""
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> DataPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- plumbing
    def _run(self, script: str, *args: Any) -> Any:
        try:
            return getattr(self.scripts, script)(args=[self.p, *args])
        except redis.ResponseError as exc:
            raise translate(exc) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailable(f"lost Redis at {redact(self.url)}: {exc}") from exc

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailable(f"lost Redis at {redact(self.url)}: {exc}") from exc

    def _key(self, kind: str, ident: str) -> str:
        return f"{self.p}:{kind}:{ident}"

    # -------------------------------------------------------------- producers: the launch driver
    def submit(self, tasks: Iterable[Task]) -> list[Task]:
        """Enqueue tasks; return copies with their FIFO `seq` assigned (in submission order, group
        members made contiguous). Every group must be submitted whole in one call (group_size
        members sharing group_id). Duplicate task or group ids → DuplicateTaskError, nothing written."""
        groups: dict[str, list[Task]] = {}
        for t in tasks:
            if not isinstance(t, Task):
                raise TypeError(f"submit() takes Task objects, got {type(t).__name__}")
            if not t.id or not t.env:
                raise ValueError(f"task {t.id!r}: id and env must be non-empty")
            if t.group_size < 1:
                raise ValueError(f"task {t.id!r}: group_size={t.group_size} must be ≥ 1")
            if not t.group_id and t.group_size != 1:
                raise ValueError(f"task {t.id!r}: group_size={t.group_size} without a group_id")
            groups.setdefault(group_key(t.id, t.group_id), []).append(t)
        ids = [t.id for members in groups.values() for t in members]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DuplicateTaskError(f"task id {dup!r} appears twice in one submit(); nothing was written")
        for members in groups.values():
            size = members[0].group_size
            if len(members) != size or any(m.group_size != size for m in members):
                raise ValueError(
                    f"group {members[0].group_id!r}: {len(members)} members submitted with group_size "
                    f"{[m.group_size for m in members]}; submit each group whole, with one group_size"
                )
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for gk in groups:
            pipe.exists(self._key("g", gk))
        for i in ids:
            pipe.exists(self._key("t", i))
        taken = self._call(pipe.execute)
        if any(taken):
            clash = [*(f"group {gk[2:]!r}" for gk in groups), *(f"task id {i!r}" for i in ids)][
                taken.index(1)
            ]
            raise DuplicateTaskError(f"{clash} was already submitted; nothing of this submit() was written")
        out: list[Task] = []
        chunk: list[Task] = []
        for members in groups.values():
            chunk.extend(members)
            if len(chunk) >= _SUBMIT_CHUNK:
                out.extend(self._submit_chunk(chunk))
                chunk = []
        if chunk:
            out.extend(self._submit_chunk(chunk))
        return out

    def _submit_chunk(self, chunk: list[Task]) -> list[Task]:
        args: list[Any] = [len(chunk)]
        for t in chunk:
            rec = encode(replace(t, seq=-1, attempt=0))
            args += [t.id, group_key(t.id, t.group_id), t.group_id, t.group_size, rec]
        first = int(self._run("submit", *args))
        return [replace(t, seq=first + i, attempt=0) for i, t in enumerate(chunk)]

    # -------------------------------------------------------------- producers: env workers
    def acquire_task(self, worker_id: str, timeout: float | None = 0.0) -> Task | None:
        """Lease the oldest pending task to `worker_id`, waiting up to `timeout` seconds (None:
        forever) while the in-flight bound is reached or nothing is pending. Returns None on
        timeout. The lease expires after `lease_timeout_s` without `heartbeat()`; the task is then
        retried. A task whose stored record is malformed is marked failed and skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        cfg = self.cfg
        while True:
            res = self._run(
                "acquire", worker_id, self._lease_ms, cfg.max_in_flight, cfg.max_attempts, cfg.group_failure
            )
            if isinstance(res, list):
                tid, rec, seq, attempt = res[0].decode(), res[1], int(res[2]), int(res[3])
                try:
                    task = decode_task(rec)
                    if task.id != tid:
                        raise CodecError(f"task record holds id {task.id!r}")
                except CodecError as exc:
                    self.fail(tid, f"malformed task record: {exc}", malformed=True)
                    continue
                return replace(task, seq=seq, attempt=attempt)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            sleep = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(sleep)
            delay = min(delay * 2, 0.05)

    def heartbeat(self, task_id: str, attempt: int | None = None) -> None:
        """Extend the lease of a running task. StaleTaskError if it is no longer ours."""
        self._run("heartbeat", task_id, _att(attempt), self._lease_ms)

    def set_reward(
        self,
        task_id: str,
        reward: float,
        step_rewards: dict[str, list[float]] | None = None,
        metrics: dict[str, float] | None = None,
        attempt: int | None = None,
    ) -> None:
        """Attach the outcome reward, optional per-step rewards (one value per sample, checked at
        finish) and env metrics to a running task. Non-finite values → ValueError."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"task {task_id}: reward {reward} is not finite")
        steps = {str(k): [float(x) for x in v] for k, v in (step_rewards or {}).items()}
        lengths = {len(v) for v in steps.values()}
        if len(lengths) > 1:
            raise ValueError(
                f"task {task_id}: step_rewards lists differ in length: { {k: len(v) for k, v in steps.items()} }"
            )
        mets = {str(k): float(v) for k, v in (metrics or {}).items()}
        for name, values in [*steps.items(), ("metrics", list(mets.values()))]:
            if not all(math.isfinite(x) for x in values):
                raise ValueError(f"task {task_id}: {name} holds a non-finite value")
        slen = lengths.pop() if lengths else -1
        self._run(
            "set_reward",
            task_id,
            _att(attempt),
            repr(reward),
            msgpack.packb(steps),
            msgpack.packb(mets),
            slen,
        )

    def finish(self, task_id: str, attempt: int | None = None) -> None:
        """Mark a running task done; its group becomes ready when every member is done or ended.
        Passing `attempt` (the Task's) makes a worker whose lease was lost get StaleTaskError.
        A task with no samples, or whose step_rewards do not match its samples → ValueError."""
        self._run("finish", task_id, _att(attempt), self.cfg.group_failure)

    def abort(self, task_id: str, reason: str, attempt: int | None = None) -> TaskStatus:
        """Give up the current attempt (its samples are discarded, the reason recorded); returns
        the new status: pending (retried, same seq) or failed (attempts exhausted)."""
        res = self._run(
            "abort", task_id, _att(attempt), reason, self.cfg.max_attempts, self.cfg.group_failure
        )
        return TaskStatus(res.decode())

    def fail(self, task_id: str, reason: str, malformed: bool = False) -> None:
        """Mark a task failed at once, whatever its attempts (e.g. bad input); terminal. A task
        already completed/failed/dropped is left as it is; a claimed one → StaleTaskError."""
        self._run("fail", task_id, reason, self.cfg.group_failure, "1" if malformed else "0")

    # -------------------------------------------------------------- producers: the gateway
    def open_session(self, task_id: str, session_id: str) -> int:
        """Bind a gateway session to the task's current attempt; returns that attempt. A task may
        have several sessions (sub-agents). Samples of a session of an earlier attempt are refused."""
        if not session_id:
            raise ValueError("session_id must be non-empty")
        return int(self._run("open_session", task_id, session_id))

    def open_recording(self, task: Task, session_id: str, worker: str) -> Task:
        """A task recorded as it happens (`forge serve`: an agent opened a session for a new task
        id): submitted and leased to `worker` at once, with `session_id` bound to it, as submit +
        acquire + open_session would leave it, but without the queue or the in-flight bound.
        `worker` then heartbeats, sets its reward and finishes it like any leased task. A task id
        that exists → DuplicateTaskError, nothing written. Returns the task with its seq."""
        if not task.id or not task.env:
            raise ValueError(f"task {task.id!r}: id and env must be non-empty")
        if task.group_id or task.group_size != 1:
            raise ValueError(f"task {task.id!r}: a recorded task has no group")
        if not session_id:
            raise ValueError("session_id must be non-empty")
        rec = encode(replace(task, seq=-1, attempt=0))
        gk = group_key(task.id, "")
        seq = self._run("record", task.id, gk, rec, worker, self._lease_ms, session_id)
        return replace(task, seq=int(seq), attempt=0)

    def append_sample(self, sample: Sample) -> None:
        """Record one model call under its task (call order kept). StaleTaskError if the session
        was not opened, belongs to an earlier attempt, or the task is not running."""
        self._append([(sample.task_id, sample.session_id, int(sample.weight_version), encode(sample))])

    def append_samples(self, samples: Iterable[Sample]) -> None:
        """`append_sample` for many samples in one round trip (one MULTI/EXEC). Each is checked on
        its own; the first error is raised after the others were recorded."""
        self._append([(s.task_id, s.session_id, int(s.weight_version), encode(s)) for s in samples])

    def _append(self, items: list[tuple[str, str, int, bytes]]) -> None:
        """RPUSH the records to their tasks' lists and check them with the append script, in one
        MULTI/EXEC: atomic, and the payloads never pass through Lua, so this runs near raw RPUSH
        speed. Records the script rejects are removed again within the same transaction.
        (`data_pool.aio.AsyncAppender` sends the same transaction from an event loop.)"""
        if not items:
            return
        groups = append_groups(items)
        for retry in (False, True):
            pipe = self.client.pipeline(transaction=True)
            for key, recs in self.append_pushes(groups):
                pipe.rpush(key, *recs)
            # plain EVALSHA: a Script object would make the pipeline ask SCRIPT EXISTS every time
            pipe.evalsha(self.scripts.append.sha, 0, *self.append_args(groups))
            results = self._call(pipe.execute, raise_on_error=False)
            if isinstance(results[-1], redis.exceptions.NoScriptError) and not retry:
                # the server restarted or flushed its scripts: undo the pushes, load, redo
                undo = self.client.pipeline(transaction=True)
                for key, n in self.append_undo(groups):
                    undo.ltrim(key, 0, -(n + 1))
                self._call(undo.execute)
                self.scripts.load(self.client)
                continue
            break
        check_append(results)

    def append_pushes(self, groups: dict[str, list[tuple[str, int, bytes]]]) -> list[tuple[str, list[bytes]]]:
        """The RPUSHes of one append transaction: (list key, records)."""
        return [(self._key("s", tid), [rec for *_, rec in recs]) for tid, recs in groups.items()]

    def append_args(self, groups: dict[str, list[tuple[str, int, bytes]]]) -> list[Any]:
        """ARGV of the append script (lua/append.lua) for one transaction."""
        args: list[Any] = [self.p, len(groups)]
        for tid, recs in groups.items():
            args += [tid, len(recs)]
            for sid, wv, _ in recs:
                args += [sid, wv]
        return args

    def append_undo(self, groups: dict[str, list[tuple[str, int, bytes]]]) -> list[tuple[str, int]]:
        """(list key, records pushed) to LTRIM off again when the script was missing (NOSCRIPT)."""
        return [(self._key("s", tid), len(recs)) for tid, recs in groups.items()]

    def append_sample_bytes(self, raw: bytes) -> None:
        """Record an already-encoded Sample (e.g. from a non-Python producer). A malformed or
        wrong-version record raises CodecError and, when its task can be identified, marks that
        task failed with the reason; nothing else is touched."""
        try:
            s = decode_sample(raw)
        except CodecError as exc:
            tid = _task_id_of(raw)
            if tid is not None:
                try:
                    self.fail(tid, f"malformed sample record: {exc}", malformed=True)
                except (UnknownTaskError, PoolError):
                    tid = None
            where = f"; task {tid} marked failed" if tid else ""
            raise CodecError(f"rejected sample record: {exc}{where}") from exc
        self._append([(s.task_id, s.session_id, int(s.weight_version), raw)])

    # -------------------------------------------------------------- queries
    _INFO_FIELDS = ("status", "seq", "attempt", "gid", "gsize", "worker", "err", "batch", "nsamples")

    def task_status(self, task_id: str) -> TaskInfo:
        """Status, seq, attempt, error, ... of one task; UnknownTaskError if never submitted."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._key("t", task_id), self._INFO_FIELDS)
        pipe.llen(self._key("s", task_id))
        (st, seq, att, gid, gsize, worker, err, batch, nsamp), n = self._call(pipe.execute)
        if st is None:
            raise UnknownTaskError(f"task {task_id} was never submitted")
        return TaskInfo(
            id=task_id,
            status=TaskStatus(st.decode()),
            seq=int(seq),
            attempt=int(att),
            group_id=gid.decode(),
            group_size=int(gsize),
            worker=worker.decode(),
            error=err.decode(),
            n_samples=int(nsamp) if nsamp is not None and n == 0 else int(n),
            batch_id=batch.decode(),
        )

    def statuses(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        """Status of many tasks in one round trip; UnknownTaskError names the first unknown one."""
        ids = list(task_ids)
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hget(self._key("t", i), "status")
        out = {}
        for i, st in zip(ids, self._call(pipe.execute), strict=True):
            if st is None:
                raise UnknownTaskError(f"task {i} was never submitted")
            out[i] = TaskStatus(st.decode())
        return out

    def counts(self) -> dict[str, int]:
        """Number of tasks per TaskStatus value (all statuses present, zeros included), plus
        `submitted`, `in_flight` (running + done), `dropped_stale`, `retries`, `malformed`."""
        raw = self._call(self.client.hgetall, f"{self.p}:cnt")
        c = {k.decode(): int(v) for k, v in raw.items()}
        out = {s.value: c.get(s.value, 0) for s in TaskStatus}
        for k in ("submitted", "dropped_stale", "retries", "malformed"):
            out[k] = c.get(k, 0)
        out["in_flight"] = out["running"] + out["done"]
        return out

    def samples(self, task_id: str, session_id: str | None = None) -> list[Sample]:
        """The samples recorded for the task's current attempt (optionally one session's)."""
        raws = self._call(self.client.lrange, self._key("s", task_id), 0, -1)
        out = [decode_sample(r) for r in raws]
        return out if session_id is None else [s for s in out if s.session_id == session_id]

    def recorded_task_ids(self, scan_count: int = 1000) -> list[str]:
        """Ids of the tasks that hold samples now (any status; a trained task's samples are deleted
        on ack unless `retain_samples`), sorted."""
        head = f"{self.p}:s:"
        ids: set[str] = set()
        cursor = 0
        while True:
            cursor, keys = self._call(self.client.scan, cursor, f"{head}*", scan_count)
            ids.update(k.decode()[len(head) :] for k in keys)
            if cursor == 0:
                return sorted(ids)

    def rewards(self, task_ids: Sequence[str]) -> dict[str, float | None]:
        """The outcome reward set for each task's current attempt; None where none was set."""
        pipe = self.client.pipeline(transaction=False)
        for i in task_ids:
            pipe.hget(self._key("t", i), "reward")
        raw = self._call(pipe.execute)
        return {i: float(r) if r is not None else None for i, r in zip(task_ids, raw, strict=True)}

    def load_episodes(self, task_ids: Sequence[str]) -> dict[str, Episode | CodecError]:
        """Episodes of done/claimed tasks, in one round trip; a task whose records cannot be
        decoded maps to the CodecError saying why (the caller decides its fate)."""
        pipe = self.client.pipeline(transaction=False)
        for i in task_ids:
            pipe.hmget(self._key("t", i), "rec", "seq", "attempt", "reward", "srew", "met")
            pipe.lrange(self._key("s", i), 0, -1)
        res = self._call(pipe.execute)
        out: dict[str, Episode | CodecError] = {}
        for j, tid in enumerate(task_ids):
            (rec, seq, att, reward, srew, met), raws = res[2 * j], res[2 * j + 1]
            try:
                if rec is None:
                    raise CodecError(f"task {tid} has no stored record")
                task = replace(decode_task(rec), seq=int(seq), attempt=int(att))
                samples = [decode_sample(r) for r in raws]
                out[tid] = Episode(
                    task=task,
                    samples=samples,
                    reward=float(reward) if reward is not None else 0.0,
                    step_rewards=_unpack_map(srew, "step_rewards"),
                    metrics=_unpack_map(met, "metrics"),
                )
            except CodecError as exc:
                out[tid] = exc
            except (ValueError, TypeError) as exc:
                out[tid] = CodecError(f"task {tid}: {exc}")
        return out

    def weight_version(self) -> int:
        """The trainer's current weight version (0 until set)."""
        v = self._call(self.client.get, f"{self.p}:wv")
        return int(v) if v is not None else 0

    def set_weight_version(self, version: int) -> None:
        """Report the trainer's current weight version (staleness is measured against it)."""
        self._call(self.client.set, f"{self.p}:wv", int(version))

    def reap_expired(self) -> int:
        """Retry (or fail) tasks whose lease expired; returns how many. acquire_task and the
        scheduler call it too, so nobody has to."""
        _, reaped = self._run("recover", "leases", "", self.cfg.group_failure, self.cfg.max_attempts)
        return int(reaped)

    def flush(self) -> None:
        """Delete every key of this pool's prefix (tests, fresh runs). Other prefixes are kept."""
        cursor = 0
        while True:
            cursor, keys = self._call(self.client.scan, cursor, f"{self.p}:*", 1000)
            if keys:
                self._call(self.client.unlink, *keys)
            if cursor == 0:
                return


def _att(attempt: int | None) -> str:
    return "" if attempt is None else str(int(attempt))


def _unpack_map(raw: bytes | None, what: str) -> dict:
    if raw is None:
        return {}
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:
        raise CodecError(f"{what}: not msgpack ({exc})") from exc
    if not isinstance(value, dict):
        raise CodecError(f"{what}: expected a map, got {type(value).__name__}")
    return value


def _task_id_of(raw: bytes) -> str | None:
    """Best effort: the task id inside a record that failed to decode."""
    try:
        rec = msgpack.unpackb(raw, raw=False)
        tid = rec["data"]["task_id"]
        return tid if isinstance(tid, str) and tid else None
    except Exception:
        return None


def append_groups(items: list[tuple[str, str, int, bytes]]) -> dict[str, list[tuple[str, int, bytes]]]:
    """(task id, session id, weight version, record) items grouped by task, call order kept."""
    groups: dict[str, list[tuple[str, int, bytes]]] = {}
    for tid, sid, wv, rec in items:
        groups.setdefault(tid, []).append((sid, wv, rec))
    return groups


def check_append(results: list[Any]) -> None:
    """Raise the first error of an append transaction's results (RPUSH replies, then the script's
    reply: one entry per sample, 1 or "CODE message"); errors as redis.ResponseError instances."""
    for r in results:
        if isinstance(r, redis.ResponseError):
            raise translate(r)
    for r in results[-1]:
        if isinstance(r, bytes):
            raise translate(redis.ResponseError(r.decode()))


def _reconnect(cfg: PoolConfig) -> DataPool:
    return connect(cfg)


def _client(url: str, cfg: PoolConfig, retries: int) -> redis.Redis:
    if retries:  # in operation: scripts over many keys may take a while
        retry, timeout = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries), 30.0
    else:  # the probe: a server that accepts but never answers must not hang us
        retry, timeout = Retry(NoBackoff(), 0), cfg.connect_timeout_s
    return redis.Redis.from_url(
        url, socket_connect_timeout=cfg.connect_timeout_s, socket_timeout=timeout, retry=retry
    )


def connect(cfg: PoolConfig | None = None) -> DataPool:
    """Connect to `cfg.redis_url`, or start an embedded redis-server in `cfg.run_dir` when it is
    None. Unreachable → RedisUnavailable naming the URL within ~connect_timeout_s."""
    cfg = (cfg or PoolConfig()).validate()
    server = None
    url = cfg.redis_url
    if url is None:
        server = EmbeddedRedis(cfg.run_dir, cfg.redis_server, host=cfg.embedded_host).start()
        url = server.url
    try:
        probe = _client(url, cfg, retries=0)
    except ValueError as exc:  # malformed URL
        raise RedisUnavailable(f"bad Redis URL {redact(url)!r}: {exc}") from exc
    try:
        probe.ping()
    except (redis.ResponseError, redis.AuthenticationError) as exc:  # e.g. wrong password
        if server is not None:
            server.stop()
        raise RedisUnavailable(f"Redis at {redact(url)} refused the connection: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if server is not None:
            server.stop()
        raise RedisUnavailable(
            f"cannot reach Redis at {redact(url)} (within {cfg.connect_timeout_s:g}s): {exc}"
        ) from exc
    except redis.RedisError as exc:  # e.g. something else listens there
        if server is not None:
            server.stop()
        raise RedisUnavailable(f"{redact(url)} does not answer like a Redis server: {exc}") from exc
    finally:
        probe.close()
    return DataPool(_client(url, cfg, retries=2), cfg, url, server)
