"""Windowed FIFO as ALGORITHMS.md §2: greedy inside [head, head+W), never beyond; acks, claims."""

import pytest

from data_pool import ClaimLostError, Scheduler, TaskStatus
from tests.helpers.pool import acquire_all, complete, make_tasks


def _run(pool, n_tasks, group_size=1):
    pool.submit(make_tasks(n_tasks, group_size))
    return {t.id: t for t in acquire_all(pool)}


def _finish(pool, running, *ids, **kw):
    for i in ids:
        complete(pool, running[f"t{i}"], **kw)


def test_window_takes_finished_tasks_inside_never_beyond(make_pool):
    pool = make_pool(max_in_flight=64, window=4)
    running = _run(pool, 12)
    sched = Scheduler(pool)
    _finish(pool, running, 1, 2, 3, 4, 5)  # the head (t0) is a straggler
    b1 = sched.next_batch(8, timeout=0)
    assert b1.task_ids == ["t1", "t2", "t3"]  # t4, t5 are finished but beyond [0, 4)
    assert [c.out_of_order for c in b1.claims] == [1, 2, 3] and b1.metrics["out_of_order_max"] == 3
    assert sched.head == 0  # the window slides only as the head is consumed
    _finish(pool, running, 0)
    b2 = sched.next_batch(8, timeout=0)
    assert b2.task_ids == ["t0", "t4", "t5"]  # t0 frees the head; the window slides to [4, 8)
    assert [c.head for c in b2.claims] == [0, 4, 5]
    assert sched.head == 6
    for b in (b1, b2):
        sched.ack(b)
    assert pool.statuses(b1.task_ids + b2.task_ids) == {
        t: TaskStatus.COMPLETED for t in b1.task_ids + b2.task_ids
    }


@pytest.mark.parametrize("mode,expect", [("strict", []), ("greedy", ["t1", "t2", "t7"])])
def test_strict_and_greedy_modes(make_pool, mode, expect):
    pool = make_pool(max_in_flight=64, mode=mode, window=0.5)
    running = _run(pool, 8)
    _finish(pool, running, 1, 2, 7)
    sched = Scheduler(pool)
    assert sched.window == (1 if mode == "strict" else None)
    assert sched.next_batch(8, timeout=0).task_ids == expect
    _finish(pool, running, 0)
    assert sched.next_batch(8, timeout=0).task_ids == (["t0", "t1", "t2"] if mode == "strict" else ["t0"])


def test_window_as_fraction_of_in_flight_bound(make_pool):
    pool = make_pool(max_in_flight=10, window=0.3)
    assert Scheduler(pool).window == 3


def test_groups_are_never_split_and_must_fit_the_window(make_pool):
    pool = make_pool(max_in_flight=64, window=5)
    running = _run(pool, 9, group_size=3)  # groups [0,1,2] [3,4,5] [6,7,8]
    sched = Scheduler(pool)
    _finish(pool, running, 3, 4, 5, 6, 7)
    assert sched.next_batch(9, timeout=0).task_ids == []  # group 1 straddles the window end (5)
    _finish(pool, running, 0, 1)
    assert sched.next_batch(9, timeout=0).task_ids == []  # group 0 not ready: t2 runs
    _finish(pool, running, 2, 8)
    batch = sched.next_batch(9, timeout=0)
    assert batch.task_ids == [f"t{i}" for i in range(9)]
    assert [len(g) for g in batch.groups] == [3, 3, 3] and batch.metrics["n_groups"] == 3


def test_head_group_larger_than_window_is_taken_whole(make_pool):
    pool = make_pool(max_in_flight=64, mode="strict")
    running = _run(pool, 8, group_size=4)
    _finish(pool, running, *range(8))
    sched = Scheduler(pool)
    assert sched.next_batch(8, timeout=0).task_ids == [f"t{i}" for i in range(8)]


def test_batch_stops_at_a_group_that_does_not_fit_and_takes_it_next(make_pool):
    pool = make_pool(max_in_flight=64, mode="greedy")
    running = _run(pool, 6, group_size=2)
    _finish(pool, running, *range(6))
    sched = Scheduler(pool)
    assert sched.next_batch(3, timeout=0).task_ids == ["t0", "t1"]
    assert sched.next_batch(1, timeout=0).task_ids == ["t2", "t3"]  # larger than n: taken whole
    assert sched.next_batch(4, timeout=0).task_ids == ["t4", "t5"]


def test_next_batch_waits_for_enough_and_times_out_with_what_it_has(make_pool):
    import threading

    pool = make_pool(max_in_flight=64, mode="greedy")
    running = _run(pool, 3)
    sched = Scheduler(pool)
    _finish(pool, running, 0)
    threading.Timer(0.3, lambda: _finish(pool, running, 1)).start()
    assert sched.next_batch(2, timeout=10).task_ids == ["t0", "t1"]
    partial = sched.next_batch(2, timeout=0.2)
    assert partial.task_ids == []
    sched.ack(partial)  # an empty batch needs no ack, but one is harmless


def test_ack_completes_and_frees_samples_nack_gives_back(make_pool):
    pool = make_pool(max_in_flight=64, mode="greedy")
    running = _run(pool, 3)
    _finish(pool, running, 0, 1, 2)
    sched = Scheduler(pool)
    b = sched.next_batch(2, timeout=0)
    assert pool.counts()["claimed"] == 2
    sched.nack(b, "OOM in the train step")
    assert pool.statuses(["t0", "t1"]) == {"t0": TaskStatus.DONE, "t1": TaskStatus.DONE}
    assert "OOM" in pool.task_status("t0").error and sched.head == 0
    b2 = sched.next_batch(3, timeout=0)
    assert b2.task_ids == ["t0", "t1", "t2"] and b2.id != b.id
    with pytest.raises(ClaimLostError):
        sched.ack(b)
    sched.ack(b2)
    info = pool.task_status("t1")
    assert info.status == TaskStatus.COMPLETED and info.n_samples == 1 and info.batch_id == b2.id
    assert pool.samples("t1") == []  # not retained
    with pytest.raises(ClaimLostError, match="already acked"):
        sched.ack(b2)
    assert pool.counts()["completed"] == 3 and pool.counts()["in_flight"] == 0


def test_retain_samples_keeps_them_after_ack(make_pool):
    pool = make_pool(mode="greedy", retain_samples=True)
    running = _run(pool, 1)
    _finish(pool, running, 0, turns=2)
    sched = Scheduler(pool)
    sched.ack(sched.next_batch(1, timeout=0))
    assert len(pool.samples("t0")) == 2


def test_restarted_trainer_continues_head_window_and_recovers_its_claims(make_pool):
    pool = make_pool(max_in_flight=64, window=2)
    running = _run(pool, 6)
    _finish(pool, running, 0, 1, 2, 3)
    first = Scheduler(pool)
    b1 = first.next_batch(2, timeout=0)
    first.ack(b1)
    b2 = first.next_batch(2, timeout=0)  # claimed, then the trainer dies before ack
    assert (b1.task_ids, b2.task_ids, first.head) == (["t0", "t1"], ["t2", "t3"], 4)
    other = make_pool(max_in_flight=64, window=2)  # a new process: fresh connection
    again = Scheduler(other)  # same consumer id → its claims come back
    assert again.head == 2 and other.client.hget("{forge}:sched", "window") == b"2"
    b3 = again.next_batch(4, timeout=0)
    assert b3.task_ids == ["t2", "t3"] and b3.id == "trainer-3"  # batch numbering continues
    with pytest.raises(ClaimLostError):
        first.ack(b2)
    again.ack(b3)
    assert pool.counts()["completed"] == 4


def test_expired_claim_of_another_consumer_is_recovered(make_pool):
    import time

    pool = make_pool(mode="greedy", claim_timeout_s=0.3)
    running = _run(pool, 2)
    _finish(pool, running, 0, 1)
    zombie = Scheduler(pool, consumer_id="a")
    b = zombie.next_batch(2, timeout=0)
    live = Scheduler(pool, consumer_id="b")
    assert live.next_batch(2, timeout=0).task_ids == []
    time.sleep(0.35)
    assert live.recover() == 1
    b2 = live.next_batch(2, timeout=0)
    assert b2.task_ids == b.task_ids
    with pytest.raises(ClaimLostError):
        zombie.ack(b)
    with pytest.raises(ClaimLostError):
        zombie.touch(b)
    live.touch(b2)
    live.ack(b2)
    assert pool.counts()["completed"] == 2


def test_metrics_lag_in_tasks_and_versions_and_waiting_time(make_pool):
    import time

    pool = make_pool(max_in_flight=8, mode="greedy")
    running = _run(pool, 10)  # t0..t7 acquired: newest acquired seq = 7
    _finish(pool, running, 2, weight_version=1)
    time.sleep(0.05)
    sched = Scheduler(pool)
    sched.set_weight_version(4)
    b = sched.next_batch(1, timeout=0)
    c = b.claims[0]
    assert (c.seq, c.lag_tasks, c.lag_versions, c.out_of_order) == (2, 5, 3, 2)
    assert 0.04 <= c.wait_s < 5 and b.weight_version == 4
    assert b.metrics["lag_tasks_max"] == 5 and b.metrics["lag_versions_mean"] == 3
    stats = sched.stats()
    assert stats["episodes"] == 1 and stats["lag_tasks_max"] == 5 and stats["pool_claimed"] == 1


def test_too_stale_episodes_are_dropped_and_counted(make_pool):
    pool = make_pool(max_in_flight=64, mode="greedy", max_staleness=2)
    running = _run(pool, 3)
    _finish(pool, running, 0, weight_version=0)
    _finish(pool, running, 1, weight_version=2)
    _finish(pool, running, 2, weight_version=3)
    sched = Scheduler(pool)
    sched.set_weight_version(4)
    b = sched.next_batch(3, timeout=0)
    assert b.task_ids == ["t1", "t2"] and b.metrics["dropped_stale"] == 1
    info = pool.task_status("t0")
    assert info.status == TaskStatus.DROPPED and "stale by 4 weight versions" in info.error
    assert pool.counts()["dropped_stale"] == 1 and sched.head == 3
