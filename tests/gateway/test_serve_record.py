"""Issue 20: `forge serve` records any agent over plain HTTP, and `forge export` writes what it
recorded. The client side is only httpx and the official openai SDK (no project imports): a
session for a new task, three multi-turn calls, a reward, finish; bad input gets 4xx JSON and
loses nothing; `forge export` (live, then from the stopped server's saved pool, JSONL and
Parquet) writes rows whose token ids match the session's samples."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pyarrow.parquet as pq
import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HI = [{"role": "user", "content": "hi"}]


def _forge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "forge.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture
def served(random_model_dir: Path, tmp_path: Path):
    run_dir = tmp_path / "serve"
    cmd = [sys.executable, "-m", "forge.cli", "serve", "--model", str(random_model_dir), "--port", "0"]
    cmd += ["--context-length", "1024", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if "engines:" in line:
            break
    text = "".join(lines)
    assert "record:" in text and "export:" in text, text
    url = re.search(r"gateway at (http://\S+)", text).group(1)  # type: ignore[union-attr]
    yield url, run_dir, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def _error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    return err["message"]


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_export(rows: list[dict], samples: list[dict], session_id: str) -> None:
    assert [(r["task_id"], r["session_id"], r["turn"]) for r in rows] == [
        ("t1", session_id, i) for i in range(3)
    ]
    for r, s in zip(rows, samples, strict=True):
        assert r["prompt_ids"] == s["prompt_ids"] and r["completion_ids"] == s["completion_ids"]
        assert r["logprobs"] == pytest.approx(s["logprobs"], abs=1e-6)
        assert r["weight_version"] == s["weight_version"] == 0
        assert r["reward"] == 0.5 and r["status"] == "done" and r["env"] == "recorded"
        assert r["metrics"] in ({"score": 2.0}, [("score", 2.0)])
    assert "What is two plus two?" in rows[0]["prompt_text"]
    assert "And three more?" in rows[2]["prompt_text"] and rows[2]["completion_text"]
    # multi-turn: each prompt extends the previous prompt and its completion, token for token
    for a, b in zip(rows, rows[1:], strict=False):
        assert b["prompt_ids"][: len(a["prompt_ids"]) + len(a["completion_ids"])] == (
            a["prompt_ids"] + a["completion_ids"]
        )


def test_record_an_agent_over_http_then_export(served, tmp_path: Path) -> None:
    url, run_dir, proc = served
    http = httpx.Client(base_url=url, timeout=60)
    opened = http.post("/sessions", json={"task_id": "t1"})
    assert opened.status_code == 200, opened.text
    sid, base_url = opened.json()["session_id"], opened.json()["base_url"]

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    messages: list[dict] = [{"role": "user", "content": "What is two plus two?"}]
    for follow_up in ("Are you sure?", "And three more?", None):
        reply = client.chat.completions.create(model="default", messages=messages, max_tokens=6)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
        if follow_up:
            messages.append({"role": "user", "content": follow_up})

    reward = {"reward": 0.5, "step_rewards": {"process": [0.1, 0.2, 0.3]}, "metrics": {"score": 2}}
    assert http.post(f"/sessions/{sid}/reward", json=reward).status_code == 200
    assert http.post(f"/sessions/{sid}/finish").json() == {"session_id": sid, "finished": True, "turns": 3}

    # bad input: 4xx JSON, and nothing recorded is lost
    _error(http.post("/sessions/nope/reward", json={"reward": 1}), 404, "session_not_found")
    msg = _error(http.post("/sessions", json={"task_id": "t1"}), 409, "task_exists")
    assert "a task is recorded once" in msg
    _error(http.post(f"/sessions/{sid}/reward", json={"reward": 1}), 409, "session_finished")
    _error(http.post(f"/sessions/{sid}/finish"), 409, "session_finished")
    _error(http.post("/sessions", json={"task_id": "t2", "session_id": sid}), 409, "session_exists")
    assert http.post(f"/sessions/{sid}/reward", content=b"{not json").status_code in (400, 409)
    samples = http.get(f"/sessions/{sid}").json()["samples"]
    assert len(samples) == 3

    # export while the server runs (its live pool), JSONL and Parquet
    out = tmp_path / "live.jsonl"
    done = _forge("export", str(run_dir), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "3 rows of 1 tasks" in done.stdout
    _check_export(_rows(out), samples, sid)
    assert [r["step_rewards"] for r in _rows(out)] == [{"process": p} for p in (0.1, 0.2, 0.3)]
    parquet = tmp_path / "live.parquet"
    assert _forge("export", str(run_dir), "--out", str(parquet), "--quiet").returncode == 0
    _check_export(_rows(parquet), samples, sid)

    # after the server stopped: from the pool it saved in its run dir
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    saved = tmp_path / "saved.jsonl"
    done = _forge("export", str(run_dir), "--out", str(saved), "--quiet")
    assert done.returncode == 0, done.stderr
    _check_export(_rows(saved), samples, sid)


def test_a_training_gateway_opens_sessions_only_for_leased_tasks(random_gateway) -> None:
    """forge launch's rule stays: an unknown task id is refused, saying why."""
    resp = httpx.post(f"{random_gateway.url}/sessions", json={"task_id": "mine"}, timeout=30)
    msg = _error(resp, 404, "task_not_found")
    assert "task mine was never submitted" in msg and "use `forge serve`" in msg


def test_a_recorded_session_keeps_its_task_leased(
    make_pool, random_engine, random_model_dir, tmp_path: Path
) -> None:
    """A slow agent's recorded task is not reaped as a dead worker's: every call renews its lease."""
    import time

    from gateway import GatewayConfig, start_gateway_in_thread

    pool = make_pool(lease_timeout_s=1.5)
    cfg = GatewayConfig(engine_urls=[random_engine.url], model=str(random_model_dir))
    with start_gateway_in_thread(cfg, pool=pool, record_new_tasks=True) as gw:
        body = httpx.post(f"{gw.url}/sessions", json={"task_id": "slow"}, timeout=30).json()
        client = openai.OpenAI(base_url=f"{body['base_url']}/v1", api_key="x", max_retries=0)
        for _ in range(3):
            time.sleep(0.6)
            client.chat.completions.create(model="default", messages=HI, max_tokens=4)
            assert pool.reap_expired() == 0
        assert pool.task_status("slow").status == "running" and len(pool.samples("slow")) == 3
