"""`DataPool.open_recording` (forge serve: a task recorded as it happens) leaves a task exactly as
submit + acquire + open_session would: leased, its session bound, finished like any task, and then
ready for the scheduler; a task id that exists is refused with nothing written."""

import pytest

from data_pool import DuplicateTaskError, Scheduler, StaleTaskError, TaskStatus
from forge.ground.types import Task
from tests.helpers.pool import make_sample, make_tasks


def test_a_recorded_task_is_leased_bound_and_trainable(pool):
    pool.submit(make_tasks(1, prefix="queued"))  # an ordinary pending task is left alone
    task = pool.open_recording(Task(id="r1", env="recorded"), "s1", "gateway")
    assert task.seq == 1 and task.attempt == 0
    info = pool.task_status("r1")
    assert info.status == TaskStatus.RUNNING and info.worker == "gateway"
    counts = pool.counts()
    assert (counts["running"], counts["pending"], counts["submitted"]) == (1, 1, 2)
    pool.heartbeat("r1", attempt=0)
    pool.append_samples([make_sample("r1", "s1", turn=i) for i in range(2)])
    assert pool.open_session("r1", "s2") == 0  # a second session of the same task (sub-agent)
    pool.set_reward("r1", 1.0, attempt=0)
    pool.finish("r1", attempt=0)
    batch = Scheduler(pool, "t").next_batch(1, timeout=1)
    assert [e.task.id for e in batch.episodes] == ["r1"] and len(batch.episodes[0].samples) == 2
    assert pool.recorded_task_ids() == ["r1"]
    assert pool.rewards(["r1", "queued0"]) == {"r1": 1.0, "queued0": None}


def test_existing_ids_and_bound_sessions_are_refused_writing_nothing(pool):
    pool.submit(make_tasks(1))
    with pytest.raises(DuplicateTaskError, match="t0"):
        pool.open_recording(Task(id="t0", env="recorded"), "s1", "gateway")
    pool.open_recording(Task(id="r1", env="recorded"), "s1", "gateway")
    with pytest.raises(DuplicateTaskError):
        pool.open_recording(Task(id="r1", env="recorded"), "s9", "gateway")
    with pytest.raises(ValueError, match="already bound to task r1"):
        pool.open_recording(Task(id="r2", env="recorded"), "s1", "gateway")
    with pytest.raises(ValueError, match="has no group"):
        pool.open_recording(Task(id="r3", env="recorded", group_id="G", group_size=2), "s3", "gateway")
    assert pool.counts()["submitted"] == 2 and pool.counts()["running"] == 1
    pool.abort("r1", "gave up", attempt=0)
    with pytest.raises(StaleTaskError):
        pool.finish("r1", attempt=0)
