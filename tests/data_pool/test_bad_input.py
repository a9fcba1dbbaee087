"""Bad input gets a clear error, its task is marked failed, and nothing else is lost."""

import msgpack
import pytest

from data_pool import CodecError, Scheduler, TaskStatus
from forge.ground.types import encode
from tests.helpers.pool import acquire_all, complete, make_sample, make_tasks


def _wrong_version(raw: bytes) -> bytes:
    rec = msgpack.unpackb(raw, raw=False)
    rec["v"] = 99
    return msgpack.packb(rec, use_bin_type=True)


def _start(pool, n=3, group_size=1):
    pool.submit(make_tasks(n, group_size))
    running = {t.id: t for t in acquire_all(pool)}
    for t in running.values():
        pool.open_session(t.id, f"s-{t.id}")
    return running


@pytest.mark.parametrize(
    "mangle,match",
    [
        (lambda raw: raw[:-7], "not a msgpack record"),
        (_wrong_version, "schema version 99"),
        (lambda raw: raw.replace(b"logprobs", b"logprobz"), "missing field 'logprobs'"),
    ],
    ids=["truncated", "wrong-version", "missing-field"],
)
def test_malformed_sample_bytes_fail_their_task_only(pool, mangle, match):
    running = _start(pool)
    good = encode(make_sample("t1", "s-t1"))
    pool.append_sample_bytes(good)
    bad = mangle(encode(make_sample("t1", "s-t1", turn=1)))
    with pytest.raises(CodecError, match=match) as err:
        pool.append_sample_bytes(bad)
    if match != "not a msgpack record":
        assert "task t1 marked failed" in str(err.value)
        info = pool.task_status("t1")
        assert info.status == TaskStatus.FAILED and "malformed sample record" in info.error
        assert pool.counts()["malformed"] == 1
    for tid in ("t0", "t2"):
        complete(pool, running[tid])
    sched = Scheduler(pool)
    assert set(sched.next_batch(3, timeout=0).task_ids) >= {"t0", "t2"}


def test_record_of_the_wrong_kind_is_rejected(pool):
    _start(pool, 1)
    task_rec = encode(make_tasks(1)[0])
    with pytest.raises(CodecError, match="expected a sample record, got a task record"):
        pool.append_sample_bytes(task_rec)


def test_corrupt_task_record_in_redis_fails_that_task_at_acquire(pool):
    pool.submit(make_tasks(3))
    pool.client.hset("{forge}:t:t0", "rec", b"\xc1garbage")
    pool.client.hset("{forge}:t:t1", "rec", _wrong_version(encode(make_tasks(2)[1])))
    t = pool.acquire_task("w")
    assert t.id == "t2"
    i0, i1 = pool.task_status("t0"), pool.task_status("t1")
    assert i0.status == i1.status == TaskStatus.FAILED
    assert "malformed task record" in i0.error and "schema version 99" in i1.error
    assert pool.counts()["malformed"] == 2 and pool.counts()["in_flight"] == 1


@pytest.mark.parametrize("policy", ["drop", "partial"])
def test_corrupt_stored_sample_fails_at_claim_and_the_batch_goes_on(make_pool, policy):
    pool = make_pool(mode="greedy", group_failure=policy)
    pool.submit(make_tasks(4, group_size=2))
    running = {t.id: t for t in acquire_all(pool)}
    for t in running.values():
        complete(pool, t)
    pool.client.rpush("{forge}:s:t1", _wrong_version(encode(make_sample("t1", "x"))))
    sched = Scheduler(pool)
    b = sched.next_batch(4, timeout=0)
    expect = ["t2", "t3"] if policy == "drop" else ["t0", "t2", "t3"]
    assert b.task_ids == expect and b.metrics["failed"] == 1
    info = pool.task_status("t1")
    assert info.status == TaskStatus.FAILED and "schema version 99" in info.error
    if policy == "drop":
        assert pool.task_status("t0").status == TaskStatus.DROPPED
    sched.ack(b)
    c = pool.counts()
    assert c["completed"] == len(expect) and c["claimed"] == 0 and c["in_flight"] == 0


def test_whole_batch_rejected_yields_empty_batch_and_refills(make_pool):
    pool = make_pool(mode="greedy")
    pool.submit(make_tasks(2))
    running = {t.id: t for t in acquire_all(pool)}
    complete(pool, running["t0"])
    pool.client.hset("{forge}:t:t0", "srew", b"\xc1")
    sched = Scheduler(pool)
    assert sched.next_batch(1, timeout=0).task_ids == []
    assert "step_rewards: not msgpack" in pool.task_status("t0").error
    complete(pool, running["t1"])
    b = sched.next_batch(1, timeout=1)
    assert b.task_ids == ["t1"]
    sched.ack(b)


def test_unknown_task_and_bad_arguments(pool):
    from data_pool import UnknownTaskError

    with pytest.raises(UnknownTaskError, match="never submitted"):
        pool.finish("ghost")
    with pytest.raises(UnknownTaskError):
        pool.append_sample(make_sample("ghost", "s"))
    with pytest.raises(TypeError, match="Task objects"):
        pool.submit([{"id": "x"}])
    with pytest.raises(ValueError, match="n must be"):
        Scheduler(pool).next_batch(0)


def test_bad_config_names_the_field():
    from data_pool import PoolConfig

    for kwargs, field in [
        ({"mode": "fifo"}, "pool.mode"),
        ({"window": 2.5}, "pool.window"),
        ({"window": 0}, "pool.window"),
        ({"max_in_flight": 0}, "pool.max_in_flight"),
        ({"group_failure": "ignore"}, "pool.group_failure"),
        ({"key_prefix": "a b"}, "pool.key_prefix"),
    ]:
        with pytest.raises(ValueError, match=field):
            PoolConfig(**kwargs).validate()
