"""`forge export` (the CLI, in its own process): a forge launch run directory's saved pool (its
AOF, loaded into a temporary redis-server; the model named in .hydra/config.yaml decodes the
text), a URL with --model, unfinished tasks exported too, and one-line errors for a missing,
unreachable or empty source, a bad output name, or a live pool whose address is unknown. The
round trip through `forge serve`: tests/gateway/test_serve_record.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from data_pool import PoolConfig, connect
from forge.ground.types import Sample, Task

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _forge(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "forge.cli", "export", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)


def _record(pool, task_id: str, turns: int, finish: bool) -> list[Sample]:
    pool.submit([Task(id=task_id, env="arithmetic")])
    task = pool.acquire_task("w")
    pool.open_session(task.id, f"s-{task_id}")
    samples = [
        Sample(task.id, f"s-{task_id}", t, [1, 2, 3 + t], [40, 41], [-0.5, -0.25], weight_version=t)
        for t in range(turns)
    ]
    pool.append_samples(samples)
    if finish:
        pool.set_reward(task.id, 1.0, {"process": [0.5] * turns}, {"accuracy": 1.0}, attempt=0)
        pool.finish(task.id, attempt=0)
    return samples


def test_export_a_stopped_launch_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model:\n  name: tiny\nseed: 0\n")
    pool = connect(PoolConfig(run_dir=str(run / "redis")))  # as forge launch's embedded pool
    try:
        done = _record(pool, "a", 2, finish=True)
        running = _record(pool, "b", 1, finish=False)
    finally:
        pool.close()  # the run stopped: its redis-server with it
    out = tmp_path / "out.jsonl"
    result = _forge(str(run), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"forge export: 3 rows of 2 tasks -> {out}"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["turn"], r["status"]) for r in rows] == [
        ("a", 0, "done"),
        ("a", 1, "done"),
        ("b", 0, "running"),
    ]
    for r, s in zip(rows, [*done, *running], strict=True):
        assert r["prompt_ids"] == s.prompt_ids and r["completion_ids"] == s.completion_ids
        assert r["logprobs"] == s.logprobs and r["weight_version"] == s.weight_version
        assert isinstance(r["prompt_text"], str) and isinstance(r["completion_text"], str)
    assert rows[0]["reward"] == 1.0 and rows[0]["step_rewards"] == {"process": 0.5}
    assert rows[0]["metrics"] == {"accuracy": 1.0} and rows[0]["env"] == "arithmetic"
    assert rows[2]["reward"] is None and rows[2]["step_rewards"] == {}  # not scored yet


def test_export_a_url_needs_a_model_for_text(redis_server, pool, tmp_path: Path) -> None:
    _record(pool, "a", 1, finish=True)
    out = tmp_path / "out.jsonl"
    result = _forge(redis_server.url, "--out", str(out))
    assert result.returncode == 2 and "pass --model NAME_OR_DIR" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    assert _forge(redis_server.url, "--out", str(out), "--no-text", "--quiet").returncode == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt_ids"] == [1, 2, 3] and "prompt_text" not in row
    assert _forge(redis_server.url, "--out", str(out), "--model", "tiny", "--quiet").returncode == 0
    assert "prompt_text" in json.loads(out.read_text())


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    live = tmp_path / "live"
    pool = connect(PoolConfig(run_dir=str(live)))  # a pool that runs, with no address recorded
    try:
        for source, says in [
            ("redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0"),
            (str(tmp_path / "missing"), "is neither a Redis URL nor a directory"),
            (str(tmp_path), f"no data pool in {tmp_path}"),
            (str(live), "is running (redis-server pid"),
        ]:
            result = _forge(source, "--out", str(tmp_path / "x.jsonl"), "--no-text")
            assert result.returncode == 2 and not result.stdout, result
            assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    finally:
        pool.close()
    result = _forge(str(tmp_path), "--out", str(tmp_path / "x.csv"))
    assert result.returncode == 2 and "name it .jsonl or .parquet" in result.stderr
    result = _forge(str(tmp_path), "--out", str(tmp_path / "no" / "x.jsonl"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()
