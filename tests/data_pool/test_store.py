"""Producer side of the pool: submit, acquire within the in-flight bound, leases, retries, sessions."""

import pickle
import time

import pytest

from data_pool import (
    DuplicateTaskError,
    StaleTaskError,
    TaskStatus,
    UnknownTaskError,
)
from forge.ground.types import Task
from tests.helpers.pool import acquire_all, complete, make_sample, make_tasks


def test_submit_assigns_fifo_seq_and_groups_contiguous(pool):
    tasks = [
        Task(id="a", env="e", group_id="G", group_size=2),
        Task(id="x", env="e"),
        Task(id="b", env="e", group_id="G", group_size=2),
    ]
    out = pool.submit(tasks)
    assert [(t.id, t.seq) for t in out] == [("a", 0), ("b", 1), ("x", 2)]
    more = pool.submit(make_tasks(2, prefix="m"))
    assert [t.seq for t in more] == [3, 4]
    assert pool.counts()["pending"] == 5 and pool.counts()["submitted"] == 5
    acquired = [pool.acquire_task("w").id for _ in range(5)]
    assert acquired == ["a", "b", "x", "m0", "m1"]


def test_submit_rejects_duplicates_and_partial_groups_writing_nothing(pool):
    pool.submit(make_tasks(2))
    with pytest.raises(DuplicateTaskError, match="'t1'"):
        pool.submit([Task(id="new", env="e"), Task(id="t1", env="e")])
    with pytest.raises(DuplicateTaskError, match="twice"):
        pool.submit([Task(id="y", env="e"), Task(id="y", env="e")])
    with pytest.raises(ValueError, match="submit each group whole"):
        pool.submit([Task(id="g0", env="e", group_id="G", group_size=3)])
    with pytest.raises(ValueError, match="without a group_id"):
        pool.submit([Task(id="g0", env="e", group_size=3)])
    pool.submit([Task(id="h0", env="e", group_id="H", group_size=1)])
    with pytest.raises(DuplicateTaskError, match="group 'H'"):
        pool.submit([Task(id="h1", env="e", group_id="H", group_size=1)])
    assert pool.counts()["submitted"] == 3
    with pytest.raises(UnknownTaskError):
        pool.task_status("new")


def test_acquire_respects_in_flight_bound_until_consumed(make_pool):
    from data_pool import Scheduler

    pool = make_pool(max_in_flight=3, mode="greedy")
    pool.submit(make_tasks(5))
    got = acquire_all(pool)
    assert [t.id for t in got] == ["t0", "t1", "t2"]
    t0 = time.monotonic()
    assert pool.acquire_task("w", timeout=0.2) is None
    assert time.monotonic() - t0 >= 0.19
    complete(pool, got[0])  # done but not yet consumed: still in flight
    assert pool.acquire_task("w", timeout=0) is None
    assert pool.counts()["in_flight"] == 3
    batch = Scheduler(pool).next_batch(1, timeout=1)
    assert batch.task_ids == ["t0"]
    assert pool.acquire_task("w", timeout=0).id == "t3"


def test_acquire_blocks_until_a_task_is_submitted(pool):
    import threading

    threading.Timer(0.2, lambda: pool.submit(make_tasks(1))).start()
    t = pool.acquire_task("w", timeout=5)
    assert t is not None and t.id == "t0"


def test_abort_retries_at_same_seq_first_then_fails_with_reasons(make_pool):
    pool = make_pool(max_attempts=2)
    pool.submit(make_tasks(3))
    t0 = pool.acquire_task("w")
    pool.open_session(t0.id, "s0")
    pool.append_sample(make_sample(t0.id, "s0"))
    assert pool.abort(t0.id, "env crashed", attempt=0) == TaskStatus.PENDING
    info = pool.task_status("t0")
    assert (info.status, info.attempt, info.seq, info.n_samples) == (TaskStatus.PENDING, 1, 0, 0)
    again = pool.acquire_task("w")  # the retry keeps its FIFO place: before t1
    assert (again.id, again.attempt, again.seq) == ("t0", 1, 0)
    with pytest.raises(StaleTaskError, match="attempt"):
        pool.finish("t0", attempt=0)
    assert pool.abort("t0", "timeout", attempt=1) == TaskStatus.FAILED
    info = pool.task_status("t0")
    assert info.status == TaskStatus.FAILED
    assert "env crashed" in info.error and "timeout" in info.error
    assert pool.acquire_task("w").id == "t1"
    c = pool.counts()
    assert (c["failed"], c["retries"], c["running"], c["pending"]) == (1, 1, 1, 1)


def test_expired_lease_is_retried_and_the_late_worker_is_refused(make_pool):
    pool = make_pool(lease_timeout_s=0.3)
    pool.submit(make_tasks(1))
    t = pool.acquire_task("dead-worker")
    pool.heartbeat(t.id, attempt=t.attempt)
    time.sleep(0.45)
    assert pool.reap_expired() == 1
    info = pool.task_status("t0")
    assert info.status == TaskStatus.PENDING and "lease expired (worker dead-worker)" in info.error
    t2 = pool.acquire_task("w2")
    assert (t2.id, t2.attempt) == ("t0", 1)
    with pytest.raises(StaleTaskError):
        pool.heartbeat("t0", attempt=0)
    with pytest.raises(StaleTaskError):
        pool.set_reward("t0", 1.0, attempt=0)
    complete(pool, t2)
    assert pool.task_status("t0").status == TaskStatus.DONE


def test_acquire_reaps_expired_leases_itself(make_pool):
    pool = make_pool(lease_timeout_s=0.2, max_in_flight=1)
    pool.submit(make_tasks(2))
    assert pool.acquire_task("dead").id == "t0"
    t = pool.acquire_task("w", timeout=3)  # blocked by the bound until the lease expires
    assert (t.id, t.attempt) == ("t0", 1)


def test_sessions_bind_samples_to_the_current_attempt(pool):
    pool.submit(make_tasks(1))
    t = pool.acquire_task("w")
    with pytest.raises(StaleTaskError, match="not open"):
        pool.append_sample(make_sample("t0", "never-opened"))
    assert pool.open_session("t0", "old") == 0
    pool.append_sample(make_sample("t0", "old", 0))
    pool.abort("t0", "agent crashed")
    with pytest.raises(StaleTaskError):
        pool.open_session("t0", "x")  # pending: not running
    t = pool.acquire_task("w")
    assert pool.open_session("t0", "new") == 1
    with pytest.raises(StaleTaskError):
        pool.append_sample(make_sample("t0", "old", 1))  # the crashed attempt's session
    pool.append_samples([make_sample("t0", "new", 0), make_sample("t0", "new", 1)])
    pool.open_session("t0", "sub-agent")
    pool.append_sample(make_sample("t0", "sub-agent", 0))
    assert [(s.session_id, s.turn) for s in pool.samples("t0")] == [("new", 0), ("new", 1), ("sub-agent", 0)]
    assert len(pool.samples("t0", session_id="new")) == 2
    pool.submit([Task(id="u", env="e")])
    assert pool.acquire_task("w").id == "u"
    with pytest.raises(ValueError, match="already bound to task t0"):
        pool.open_session("u", "new")
    with pytest.raises(UnknownTaskError):
        pool.open_session("nope", "s")
    assert t.attempt == 1


def test_finish_checks_samples_and_step_rewards(pool):
    pool.submit(make_tasks(1))
    t = pool.acquire_task("w")
    with pytest.raises(ValueError, match="no samples"):
        pool.finish(t.id)
    pool.open_session(t.id, "s")
    pool.append_samples([make_sample(t.id, "s", 0), make_sample(t.id, "s", 1)])
    with pytest.raises(ValueError, match="not finite"):
        pool.set_reward(t.id, float("nan"))
    with pytest.raises(ValueError, match="differ in length"):
        pool.set_reward(t.id, 1.0, step_rewards={"a": [1.0], "b": [1.0, 2.0]})
    pool.set_reward(t.id, 1.0, step_rewards={"process": [0.5]})
    with pytest.raises(ValueError, match="1 values for 2 samples"):
        pool.finish(t.id)
    assert pool.task_status(t.id).status == TaskStatus.RUNNING  # nothing lost: fix and finish
    pool.set_reward(t.id, 0.25, step_rewards={"process": [0.5, 1.0]}, metrics={"acc": 1.0})
    pool.finish(t.id, attempt=t.attempt)
    with pytest.raises(StaleTaskError, match="done"):
        pool.finish(t.id)
    ep = pool.load_episodes([t.id])[t.id]
    assert ep.reward == 0.25 and ep.step_rewards == {"process": [0.5, 1.0]} and ep.metrics == {"acc": 1.0}
    assert [s.turn for s in ep.samples] == [0, 1] and ep.task.seq == 0


def test_fail_is_terminal_and_idempotent(pool):
    pool.submit(make_tasks(2))
    pool.fail("t1", "bad payload")  # still pending
    assert pool.task_status("t1").status == TaskStatus.FAILED
    pool.fail("t1", "again")
    assert pool.acquire_task("w").id == "t0"
    assert pool.acquire_task("w", timeout=0) is None
    assert pool.counts()["failed"] == 1


def test_pool_pickles_by_reconnecting(pool):
    pool.submit(make_tasks(1))
    clone = pickle.loads(pickle.dumps(pool))
    try:
        assert clone.url == pool.url and clone.task_status("t0").seq == 0
    finally:
        clone.close()


def test_weight_version_and_flush(make_pool):
    a, b = make_pool(key_prefix="a"), make_pool(key_prefix="b")
    a.set_weight_version(7)
    assert a.weight_version() == 7 and b.weight_version() == 0
    a.submit(make_tasks(1))
    b.submit(make_tasks(1))
    a.flush()
    assert a.counts()["submitted"] == 0 and b.counts()["submitted"] == 1


def test_batch_append_keeps_valid_samples_and_cuts_rejected_ones(pool):
    from data_pool import PoolError

    pool.submit(make_tasks(2))
    a, b = pool.acquire_task("w"), pool.acquire_task("w")
    pool.open_session(a.id, "sa")
    pool.open_session(b.id, "sb")
    pool.append_sample(make_sample(a.id, "sa", 0))
    batch = [
        make_sample(a.id, "sa", 1),
        make_sample(a.id, "stale", 99),  # rejected in the middle of valid ones: tombstone path
        make_sample(a.id, "sa", 2),
        make_sample(b.id, "nope", 99),  # every sample of b rejected: LTRIM path
        make_sample("ghost", "sa", 99),  # unknown task: its list must not be left behind
    ]
    with pytest.raises(PoolError) as err:
        pool.append_samples(batch)
    assert isinstance(err.value, StaleTaskError) and "stale" in str(err.value)
    assert [s.turn for s in pool.samples(a.id)] == [0, 1, 2]
    assert pool.samples(b.id) == [] and not pool.client.exists("{forge}:s:ghost")
    assert pool.task_status(a.id).n_samples == 3


def test_append_survives_a_script_flush(pool):
    pool.submit(make_tasks(1))
    t = pool.acquire_task("w")
    pool.open_session(t.id, "s")
    pool.client.script_flush()  # as after a restart of the server
    pool.append_samples([make_sample(t.id, "s", 0), make_sample(t.id, "s", 1)])
    pool.append_sample(make_sample(t.id, "s", 2))
    assert [s.turn for s in pool.samples(t.id)] == [0, 1, 2]
    pool.set_reward(t.id, 1.0)  # the other scripts reload themselves too
    pool.finish(t.id)


def test_oldest_weight_version_is_tracked_for_staleness(pool):
    pool.submit(make_tasks(1))
    t = pool.acquire_task("w")
    pool.open_session(t.id, "s")
    pool.append_samples(
        [make_sample(t.id, "s", 0, weight_version=5), make_sample(t.id, "s", 1, weight_version=3)]
    )
    pool.append_sample(make_sample(t.id, "s", 2, weight_version=4))
    assert pool.client.hget("{forge}:t:t0", "minwv") == b"3"
