"""The session API against the real data pool: open, inspect, reward, finish, and what is refused."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai

from data_pool import TaskStatus
from forge.ground.types import Task
from tests.helpers.gateway import open_session, session_info, start_task

HI = [{"role": "user", "content": "hi"}]


def chat(base_url: str, **kw: Any) -> httpx.Response:
    body = {"model": "default", "messages": HI, "max_tokens": 3, **kw}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)


def test_episode_through_the_session_api(random_gateway: Any, pool: Any) -> None:
    tid = start_task(pool)
    resp = httpx.post(
        f"{random_gateway.url}/sessions", json={"task_id": tid, "session_id": "ep-1", "metadata": {"k": 1}}
    )
    assert resp.status_code == 200
    sess = resp.json()
    assert sess["session_id"] == "ep-1" and sess["base_url"] == f"{random_gateway.url}/sessions/ep-1"
    assert sess["task_id"] == tid and sess["attempt"] == 0
    for _ in range(2):
        assert chat(sess["base_url"]).status_code == 200
    info = session_info(random_gateway.url, "ep-1")
    assert info["turns"] == 2 and info["metadata"] == {"k": 1} and not info["finished"]
    s = info["samples"][0]
    assert set(s) >= {"turn", "prompt_ids", "completion_ids", "logprobs", "weight_version", "prefix_break"}
    assert s["weight_version"] == 0 and s["timings"]["engine_s"] > 0
    # the engine's own time (SGLang's e2e_latency) is inside the time the gateway waited for it
    assert 0 < s["timings"]["engine_e2e_s"] < s["timings"]["engine_s"]
    r = httpx.post(
        f"{random_gateway.url}/sessions/ep-1/reward", json={"reward": 0.5, "metrics": {"acc": 1.0}}
    )
    assert r.status_code == 200, r.text
    assert httpx.post(f"{random_gateway.url}/sessions/ep-1/finish").status_code == 200
    assert pool.task_status(tid).status == TaskStatus.DONE
    ep = pool.load_episodes([tid])[tid]
    assert ep.reward == 0.5 and ep.metrics == {"acc": 1.0} and len(ep.samples) == 2
    assert ep.samples[0].prompt_ids == s["prompt_ids"] and ep.samples[0].logprobs == s["logprobs"]
    # a finished session takes no more calls, rewards or finishes; it can still be inspected
    assert chat(sess["base_url"]).json()["error"]["code"] == "session_finished"
    assert httpx.post(f"{random_gateway.url}/sessions/ep-1/reward", json={"reward": 1}).status_code == 409
    assert session_info(random_gateway.url, "ep-1")["finished"]


def test_sessions_are_refused_for_tasks_not_running(random_gateway: Any, pool: Any) -> None:
    url = random_gateway.url
    r = httpx.post(f"{url}/sessions", json={"task_id": "never-submitted"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    sess = open_session(url, pool)
    again = httpx.post(f"{url}/sessions", json={"task_id": sess["task_id"], "session_id": sess["session_id"]})
    assert again.status_code == 409
    pool.submit([Task(id="waiting", env="test")])  # pending, not leased to any worker
    assert httpx.post(f"{url}/sessions", json={"task_id": "waiting"}).status_code == 409
    assert httpx.post(f"{url}/sessions", json={}).status_code == 400
    assert httpx.post(f"{url}/sessions", json={"task_id": "x", "session_id": "a/b"}).status_code == 400


def test_an_aborted_task_stops_its_session(random_gateway: Any, pool: Any) -> None:
    sess = open_session(random_gateway.url, pool)
    assert chat(sess["base_url"]).status_code == 200
    assert session_info(random_gateway.url, sess["session_id"])["turns"] == 1  # its append is done
    pool.abort(sess["task_id"], "worker gave up")
    # write-behind: this answer goes out before the pool refuses its record ...
    assert chat(sess["base_url"]).status_code == 200
    # ... and the refusal stops every later operation of the session
    r = chat(sess["base_url"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "stale"
    reward = httpx.post(f"{random_gateway.url}/sessions/{sess['session_id']}/reward", json={"reward": 1})
    assert reward.status_code == 409 and reward.json()["error"]["code"] == "stale"
    c = openai.OpenAI(base_url=f"{sess['base_url']}/v1", api_key="x", max_retries=0)
    try:
        c.chat.completions.create(model="default", messages=HI, max_tokens=2)
        raise AssertionError("expected a 409")
    except openai.ConflictError as exc:
        assert "no longer running" in exc.message


def test_answers_do_not_wait_for_the_pool_but_reward_does(random_gateway: Any, pool: Any) -> None:
    """Write-behind recording: with Redis refusing writes, a call is answered at once and
    its sample is not in the pool yet; the reward waits for the append, so the count is exact the
    moment it returns."""
    sess = open_session(random_gateway.url, pool)
    assert chat(sess["base_url"]).status_code == 200
    # the first call's append is written behind its answer, and the next call waits for it (calls
    # are recorded in order): pause only once it has landed, or the second call waits on the pause
    deadline = time.monotonic() + 10
    while pool.task_status(sess["task_id"]).n_samples < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.task_status(sess["task_id"]).n_samples == 1
    # reads are still answered; lifted below, not by a timeout, so a slow call cannot outlast it
    pool.client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        assert chat(sess["base_url"]).status_code == 200
        assert pool.task_status(sess["task_id"]).n_samples == 1  # the second append is on the wire
    finally:
        pool.client.execute_command("CLIENT", "UNPAUSE")
        r = httpx.post(
            f"{random_gateway.url}/sessions/{sess['session_id']}/reward", json={"reward": 1.0}, timeout=30
        )
    assert r.status_code == 200, r.text
    assert pool.task_status(sess["task_id"]).n_samples == 2


def test_bad_session_bodies(random_gateway: Any, pool: Any) -> None:
    sess = open_session(random_gateway.url, pool)
    base = f"{random_gateway.url}/sessions/{sess['session_id']}"
    assert httpx.post(f"{base}/reward", content=b'{"reward": NaN}').status_code == 400
    assert httpx.post(f"{base}/reward", json={"reward": "high"}).status_code == 400
    assert httpx.post(f"{base}/reward", json={"reward": 1, "step_rewards": {"p": [1.0]}}).status_code == 200
    r = httpx.post(f"{base}/finish")  # step rewards for 1 sample, but the session made no calls
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.post(f"{base}/finish", json={"extra": 1}).status_code == 400


def test_without_a_pool_samples_stay_in_memory(
    make_gateway: Any, random_engine: Any, random_model_dir: Any
) -> None:
    gw = make_gateway([random_engine.url], random_model_dir)
    sess = httpx.post(f"{gw.url}/sessions", json={"task_id": "anything"}).json()
    assert chat(sess["base_url"]).status_code == 200
    assert chat(sess["base_url"]).status_code == 200
    info = session_info(gw.url, sess["session_id"])
    assert [s["turn"] for s in info["samples"]] == [0, 1]
    assert httpx.post(f"{gw.url}/sessions/{sess['session_id']}/finish").status_code == 200
