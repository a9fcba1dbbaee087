"""Group readiness and what a failed or stale member does (group_failure = drop | partial)."""

from data_pool import Scheduler, TaskStatus
from tests.helpers.pool import acquire_all, complete, make_tasks


def _setup(make_pool, **cfg):
    pool = make_pool(max_in_flight=64, mode="greedy", max_attempts=1, **cfg)
    pool.submit(make_tasks(3, group_size=3) + make_tasks(1, prefix="solo"))
    return pool, {t.id: t for t in acquire_all(pool)}, Scheduler(pool)


def test_group_is_ready_only_when_every_member_finished(make_pool):
    pool, running, sched = _setup(make_pool)
    complete(pool, running["t0"])
    complete(pool, running["t2"])
    assert sched.next_batch(4, timeout=0).task_ids == []
    complete(pool, running["t1"])
    b = sched.next_batch(4, timeout=0)
    assert b.task_ids == ["t0", "t1", "t2"] and len(b.groups) == 1


def test_drop_policy_drops_the_group_of_a_failed_member(make_pool):
    pool, running, sched = _setup(make_pool, group_failure="drop")
    complete(pool, running["t0"])
    complete(pool, running["t1"])
    assert pool.abort("t2", "sandbox crashed") == TaskStatus.FAILED
    complete(pool, running["solo0"])
    assert sched.next_batch(4, timeout=0).task_ids == ["solo0"]
    st = pool.statuses(["t0", "t1", "t2"])
    assert st == {"t0": TaskStatus.DROPPED, "t1": TaskStatus.DROPPED, "t2": TaskStatus.FAILED}
    assert "another member of its group failed" in pool.task_status("t0").error
    assert sched.head == 4  # the dropped group no longer holds the head


def test_drop_policy_also_when_the_failure_comes_first(make_pool):
    pool, running, sched = _setup(make_pool, group_failure="drop")
    pool.abort("t1", "boom")
    complete(pool, running["t0"])
    complete(pool, running["t2"])
    assert sched.next_batch(4, timeout=0).task_ids == []
    assert pool.counts()["dropped"] == 2


def test_partial_policy_trains_the_members_that_completed(make_pool):
    pool, running, sched = _setup(make_pool, group_failure="partial")
    complete(pool, running["t0"])
    pool.abort("t1", "boom")
    assert sched.next_batch(4, timeout=0).task_ids == []  # t2 still running
    complete(pool, running["t2"])
    b = sched.next_batch(4, timeout=0)
    assert b.task_ids == ["t0", "t2"] and [len(g) for g in b.groups] == [2]


def test_partial_policy_group_with_no_member_left_is_dropped(make_pool):
    pool, running, sched = _setup(make_pool, group_failure="partial")
    for t in ("t0", "t1", "t2"):
        pool.abort(t, "boom")
    complete(pool, running["solo0"])
    assert sched.next_batch(4, timeout=0).task_ids == ["solo0"]
    assert sched.head == 4


def test_stale_member_drops_group_or_only_itself(make_pool):
    for policy, expect in (("drop", []), ("partial", ["t1", "t2"])):
        pool, running, sched = _setup(make_pool, group_failure=policy, max_staleness=1, key_prefix=policy)
        complete(pool, running["t0"], weight_version=0)
        complete(pool, running["t1"], weight_version=2)
        complete(pool, running["t2"], weight_version=2)
        sched.set_weight_version(2)
        b = sched.next_batch(3, timeout=0)
        assert b.task_ids == expect, policy
        assert b.metrics["dropped_stale"] == 1 and pool.counts()["dropped_stale"] == 1
        assert pool.task_status("t0").status == TaskStatus.DROPPED


def test_nacked_group_comes_back_whole(make_pool):
    pool, running, sched = _setup(make_pool)
    for t in ("t0", "t1", "t2"):
        complete(pool, running[t])
    b = sched.next_batch(3, timeout=0)
    sched.nack(b)
    assert sched.next_batch(3, timeout=0).task_ids == ["t0", "t1", "t2"]
