"""`forge bench pool`: samples/s written and read through the pool API vs raw Redis.

Realistic samples: a 2k-token prompt and a 512-token completion as int32 arrays, float32
log-probs (≈12 KiB encoded). Write = `DataPool.append_samples` (pipelined; each sample is one
atomic Lua append that checks its session and attempt) and, for reference, one `append_sample`
round trip per sample and samples whose ids are Python lists (the codec's list → int32 cost).
Read = the trainer's path: `Scheduler.next_batch` (claim + fetch + decode) and `ack`.
Raw = `redis-benchmark -t rpush -P <pipeline>` with values of the encoded sample's size on the
same server (AOF everysec, as in a run); without redis-benchmark, pipelined RPUSH from redis-py
(field `raw_source` says which). ratio = write_per_s / raw_per_s (target ≥ 0.5). Raw and API
writes alternate `--repeat` times and the medians are reported (the runs are listed too).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import time
from urllib.parse import urlsplit

import numpy as np
from rich.progress import Progress

from data_pool.scheduler import Scheduler
from data_pool.store import DataPool
from forge.bench.pool_common import bench_pool, emit, err, reconfigure
from forge.ground.types import Sample, Task, encode

COLUMNS = [
    ("write_per_s", "write/s (pipelined API)", ",.0f"),
    ("read_per_s", "read/s (next_batch)", ",.0f"),
    ("raw_per_s", "raw RPUSH/s", ",.0f"),
    ("ratio", "write / raw", ".2f"),
    ("raw_source", "raw source", ""),
    ("write_single_per_s", "write/s (1 call each)", ",.0f"),
    ("write_lists_per_s", "write/s (list ids)", ",.0f"),
    ("raw_redispy_per_s", "raw RPUSH/s (redis-py)", ",.0f"),
    ("sample_bytes", "bytes/sample", ",d"),
    ("samples", "samples", ",d"),
]


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="forge bench pool", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object per configuration")
    p.add_argument("--samples", type=int, default=4000, help="samples written per run (and read)")
    p.add_argument("--turns", type=int, default=8, help="samples per task (episode)")
    p.add_argument("--prompt", type=int, default=2048, help="prompt tokens")
    p.add_argument("--completion", type=int, default=512, help="completion tokens")
    p.add_argument("--pipeline", type=int, default=64, help="samples per append_samples call / raw -P")
    p.add_argument("--read-batch", type=int, default=16, help="episodes per next_batch")
    p.add_argument("--clients", type=int, default=1, help="redis-benchmark connections (-c)")
    p.add_argument("--repeat", type=int, default=3, help="alternating raw/API runs; medians are reported")
    p.add_argument("--redis-url", default=None, help="external Redis (default: embedded)")
    return p.parse_args(argv)


def _samples(tasks: list[Task], turns: int, a: argparse.Namespace, as_lists: bool = False) -> list[Sample]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 150_000, a.prompt, dtype=np.int32)
    completion = rng.integers(0, 150_000, a.completion, dtype=np.int32)
    logprobs = -rng.random(a.completion, dtype=np.float32)
    out = []
    for t in tasks:
        for turn in range(turns):
            ids_p, ids_c, lp = prompt, completion, logprobs
            if as_lists:
                ids_p, ids_c, lp = prompt.tolist(), completion.tolist(), logprobs.tolist()
            out.append(
                Sample(
                    task_id=t.id,
                    session_id=f"s-{t.id}",
                    turn=turn,
                    prompt_ids=ids_p,
                    completion_ids=ids_c,
                    logprobs=lp,
                    weight_version=1,
                    timings={"gen_s": 1.5},
                )
            )
    return out


def _open(pool: DataPool, n_tasks: int, prefix: str) -> list[Task]:
    pool.submit([Task(id=f"{prefix}{i}", env="bench") for i in range(n_tasks)])
    tasks = []
    while (t := pool.acquire_task("bench", timeout=0)) is not None:
        pool.open_session(t.id, f"s-{t.id}")
        tasks.append(t)
    assert len(tasks) == n_tasks, "in-flight bound too small for the bench"
    return tasks


def _timed_writes(pool: DataPool, samples: list[Sample], chunk: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(samples), chunk):
        pool.append_samples(samples[i : i + chunk])
    return len(samples) / (time.perf_counter() - t0)


def find_redis_benchmark() -> str | None:
    return shutil.which("redis-benchmark")


def _redis_benchmark(url: str, size: int, n: int, pipeline: int, clients: int) -> float | None:
    exe = find_redis_benchmark()
    if exe is None:
        return None
    u = urlsplit(url)
    cmd = [exe, "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379), "-t", "rpush"]
    cmd += ["-n", str(n), "-d", str(size), "-P", str(pipeline), "-c", str(clients), "--csv", "-q"]
    if u.password:
        cmd += ["-a", u.password]
    if u.path.strip("/"):
        cmd += ["--dbnum", u.path.strip("/")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    m = re.search(r'"RPUSH[^"]*","([\d.]+)"', out)
    if not m:
        raise RuntimeError(f"cannot parse redis-benchmark output: {out!r}")
    return float(m[1])


def _redispy_rpush(pool: DataPool, raw: bytes, n: int, pipeline: int) -> float:
    key = f"{pool.p}:bench-raw"
    t0 = time.perf_counter()
    for i in range(0, n, pipeline):
        pipe = pool.client.pipeline(transaction=False)
        for _ in range(min(pipeline, n - i)):
            pipe.rpush(key, raw)
        pipe.execute()
    rate = n / (time.perf_counter() - t0)
    pool.client.delete(key)
    return rate


def main(argv: list[str]) -> int:
    a = _args(argv)
    n_tasks = max(1, a.samples // a.turns)
    n = n_tasks * a.turns
    with bench_pool(a.redis_url, "bench-pool", max_in_flight=10 * n_tasks + 100, mode="greedy") as pool:
        with Progress(console=err, transient=True) as progress:
            bar = progress.add_task("pool bench", total=3 * a.repeat + 3)
            size = len(encode(_samples([Task(id="x0", env="b")], 1, a)[0]))
            # raw and API writes alternate, `repeat` times each; medians are reported, so a
            # burst of load from other processes does not decide the ratio
            raw_runs: list[float] = []
            py_runs: list[float] = []
            write_runs: list[float] = []
            tasks: list[Task] = []
            for r in range(a.repeat):
                rb = _redis_benchmark(pool.url, size, n, a.pipeline, a.clients)
                pool.client.delete("mylist")  # redis-benchmark's key
                if rb is not None:
                    raw_runs.append(rb)
                progress.advance(bar)
                py_runs.append(_redispy_rpush(pool, b"\x00" * size, n, a.pipeline))
                progress.advance(bar)
                batch = _open(pool, n_tasks, f"w{r}-")
                write_runs.append(_timed_writes(pool, _samples(batch, a.turns, a), a.pipeline))
                tasks += batch
                progress.advance(bar)
            raw_bench = statistics.median(raw_runs) if raw_runs else None
            raw_py = statistics.median(py_runs)
            write = statistics.median(write_runs)

            few = max(1, min(n_tasks, 500 // a.turns))
            single_tasks = _open(pool, few, "one")
            singles = _samples(single_tasks, a.turns, a)
            t0 = time.perf_counter()
            for s in singles:
                pool.append_sample(s)
            write_single = len(singles) / (time.perf_counter() - t0)
            list_tasks = _open(pool, few, "list")
            write_lists = _timed_writes(pool, _samples(list_tasks, a.turns, a, as_lists=True), a.pipeline)
            progress.advance(bar)

            for t in tasks:
                pool.set_reward(t.id, 1.0)
                pool.finish(t.id, attempt=t.attempt)
            for t in single_tasks + list_tasks:
                pool.fail(t.id, "bench: reference writes only")
            progress.advance(bar)
            reader = reconfigure(pool, mode="greedy")
            sched = Scheduler(reader, consumer_id="bench")
            read_samples = 0
            total = len(tasks) * a.turns
            t0 = time.perf_counter()
            while read_samples < total:
                b = sched.next_batch(min(a.read_batch, (total - read_samples) // a.turns), timeout=5)
                if not b.episodes:
                    raise RuntimeError("pool bench: next_batch returned nothing")
                read_samples += sum(len(e.samples) for e in b.episodes)
                sched.ack(b)
            read = read_samples / (time.perf_counter() - t0)
            reader.close()
            progress.advance(bar)
        raw = raw_bench if raw_bench is not None else raw_py
        if raw_bench is None:
            err.print(
                "[yellow]redis-benchmark not found: raw throughput measured with redis-py pipelines[/yellow]"
            )
        row = {
            "write_per_s": write,
            "read_per_s": read,
            "raw_per_s": raw,
            "ratio": write / raw,
            "raw_source": f"redis-benchmark -t rpush -P {a.pipeline} -c {a.clients}"
            if raw_bench is not None
            else f"redis-py pipeline RPUSH x{a.pipeline}",
            "read_ratio": read / raw,
            "write_single_per_s": write_single,
            "write_lists_per_s": write_lists,
            "raw_redispy_per_s": raw_py,
            "sample_bytes": size,
            "samples": n,
            "repeat": a.repeat,
            "write_runs": write_runs,
            "raw_runs": raw_runs or py_runs,
            "pipeline": a.pipeline,
            "prompt_tokens": a.prompt,
            "completion_tokens": a.completion,
            "redis_version": pool.client.info("server")["redis_version"],
        }
        emit(
            [row],
            COLUMNS,
            a.json,
            f"data pool throughput, {size:,}-byte samples, Redis {row['redis_version']}",
        )
    return 0
