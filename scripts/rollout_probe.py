"""Agent-side cost per episode: CPU of one EnvWorker process and of the serving process.

Starts `forge serve` (embedded Redis, tiny model on CPU, gateway) in a subprocess, submits N
single-call `calculator` tasks (4 new tokens each) and runs one EnvWorker over them in this
process. Prints episodes/s, the worker's CPU per episode and the serving process's.

    .venv/bin/python scripts/rollout_probe.py [N=200] [CONCURRENCY=64]      # PROF=cumtime: cProfile
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import psutil

from agent_side.tasks import make_tasks
from agent_side.worker import EnvWorker
from data_pool import PoolConfig, connect


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    run_dir = tempfile.mkdtemp(prefix="forge-rollout-probe-")
    cmd = [sys.executable, "-m", "forge.cli", "serve", "--port", "0", "--run-dir", run_dir]
    proc = subprocess.Popen(cmd + ["--max-running-requests", "64"], stdout=subprocess.PIPE, text=True)
    gateway = pool_url = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"gateway at (\S+)", line):
            gateway = m.group(1)
        if m := re.search(r"pool: (\S+)", line):
            pool_url = m.group(1)
            break
    try:
        pool = connect(PoolConfig(redis_url=pool_url, max_in_flight=10_000))
        settings = {"max_tokens": 4, "max_turns": 1}
        pool.submit(make_tasks("calculator", n, 0, 1, settings))
        worker = EnvWorker(pool, str(gateway), concurrency=concurrency, env_configs={"calculator": settings})
        served = psutil.Process(proc.pid)
        c0, r0, t0 = served.cpu_times(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if os.environ.get("PROF"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            stats = prof.runcall(asyncio.run, worker.run(max_episodes=n, idle_exit_s=2))
            pstats.Stats(prof).sort_stats(os.environ["PROF"]).print_stats(40)
        else:
            stats = asyncio.run(worker.run(max_episodes=n, idle_exit_s=2))
        wall = time.perf_counter() - t0
        c1, r1 = served.cpu_times(), resource.getrusage(resource.RUSAGE_SELF)
        mine = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        theirs = (c1.user + c1.system) - (c0.user + c0.system)
        print(stats)
        print(
            f"episodes/s {n / wall:.1f}   worker CPU/episode {1000 * mine / n:.1f} ms   "
            f"serve (gateway + engine) CPU/episode {1000 * theirs / n:.1f} ms"
        )
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    main()
