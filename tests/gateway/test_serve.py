"""`forge serve` as a user runs it (its own process), `forge bench gateway`, and the Ray actor."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai

from data_pool import PoolConfig, connect
from tests.helpers.gateway import open_session, session_info

HI = [{"role": "user", "content": "hi"}]


def test_forge_serve(random_model_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "forge.cli", "serve", "--model", str(random_model_dir), "--port", "0"]
    cmd += ["--context-length", "512", "--run-dir", str(tmp_path / "redis")]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "engines:" in line:
                break
        text = "".join(lines)
        url = re.search(r"gateway at (http://\S+)", text).group(1)  # type: ignore[union-attr]
        pool_url = re.search(r"pool: (redis://\S+)", text).group(1)  # type: ignore[union-attr]
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert (
            c.chat.completions.create(model="default", messages=HI, max_tokens=3).choices[0].message.content
        )
        pool = connect(PoolConfig(redis_url=pool_url))
        try:
            sess = open_session(url, pool)
            cs = openai.OpenAI(base_url=f"{sess['base_url']}/v1", api_key="x", max_retries=0)
            cs.chat.completions.create(model="default", messages=HI, max_tokens=3)
            assert len(session_info(url, sess["session_id"])["samples"]) == 1  # waits for the append
            assert len(pool.samples(sess["task_id"])) == 1
        finally:
            pool.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_bench_gateway_reports_its_fields(capsys: Any) -> None:
    from forge.bench.gateway import main

    argv = ["--json", "--requests", "8", "--turns", "2", "--concurrency", "8", "--duration", "2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["pairs"] == 8 and out["concurrency"] == 8 and out["pool"] is True
    for key in ("p50_overhead_ms", "p99_overhead_ms", "requests_per_s", "requests_per_s_direct"):
        assert isinstance(out[key], float)
    assert out["requests_per_s"] > 0 and out["p99_overhead_ms"] >= out["p50_overhead_ms"]


def test_ray_actor(random_engine: Any, random_model_dir: Path, pool: Any) -> None:
    import ray

    from gateway import GatewayConfig
    from gateway.actor import GatewayActor

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cfg = GatewayConfig(engine_urls=[random_engine.url], model=str(random_model_dir))
        actor = GatewayActor.remote(cfg, pool)  # the DataPool pickles as its URL
        url = ray.get(actor.url.remote(), timeout=120)
        sess = open_session(url, pool)
        r = httpx.post(
            f"{sess['base_url']}/v1/chat/completions",
            json={"model": "default", "messages": HI, "max_tokens": 2},
        )
        assert r.status_code == 200
        assert len(session_info(url, sess["session_id"])["samples"]) == 1
        assert ray.get(actor.stats.remote())["sessions"] == 1
        ray.get(actor.stop.remote())
    finally:
        if started:
            ray.shutdown()
