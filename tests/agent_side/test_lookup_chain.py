"""`lookup_chain`, the long-horizon env (issue 18): the chain and its verifier with hand-written
replies, the observation size in real tokens, bad settings refused at start naming the key, one
random-model episode over the gateway (16 calls, one growing token-exact context), the bench's env
selection, and (slow) `forge launch model=tiny env=lookup_chain` with 16 calls per episode."""

import asyncio
import functools
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from agent_side.envs.lookup_chain import END, START, LookupChain, LookupChainConfig, render_record
from agent_side.registry import make_config
from agent_side.runner import run_episode
from agent_side.tasks import make_tasks
from forge.bench import e2e as bench_e2e

GARBAGE = {"role": "assistant", "content": "ĠthelessĠ§ 17 quartz( olive 3 ..."}


def _env(**settings) -> LookupChain:
    cfg = make_config("lookup_chain", settings)
    (task,) = make_tasks("lookup_chain", 1, 0, 1, cfg)
    env = LookupChain(cfg, task)
    env.reset()
    return env


def _lookup(key: object, name: str = "lookup", raw: str | None = None, call_id: str = "c1") -> dict:
    arguments = raw if raw is not None else json.dumps({"key": key})
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    from forge.ground.models import smollm2_tokenizer_dir

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())


def test_tasks_are_deterministic_chains_of_the_configured_length() -> None:
    cfg = LookupChainConfig(min_calls=16, max_calls=20, max_turns=24)
    tasks = make_tasks("lookup_chain", 40, 0, 1, cfg)
    assert [t.payload for t in tasks] == [t.payload for t in make_tasks("lookup_chain", 40, 0, 1, cfg)]
    lengths = {len(t.payload["records"]) + 1 for t in tasks}  # calls = lookups + the answer
    assert lengths <= set(range(16, 21)) and len(lengths) > 1
    for t in tasks:
        p = t.payload
        keys = [r["key"] for r in p["records"]]
        assert len(set(keys)) == len(keys) and p["start_next"] == keys[0] and START not in keys
        assert all(k[0].isalpha() and len(k) == 6 for k in keys)
        assert p["answer"] == str(p["records"][-1]["value"])
        values = [r["value"] for r in p["records"]]
        assert len(set(values)) == len(values)
        # the answer is in the last record only: it cannot be read off before the chain is walked
        earlier = [render_record(p["records"], i) for i in range(len(keys) - 1)]
        assert all(p["answer"] not in text for text in [p["question"], *earlier])


def test_a_perfect_agent_needs_one_call_per_record_and_the_answer() -> None:
    env = _env()
    records = env.payload["records"]
    assert env.tools[0]["function"]["name"] == "lookup"
    assert f"next: {records[0]['key']}" in env.payload["question"]
    key, calls = env.payload["start_next"], 0
    for i in range(len(records)):
        result = env.step(_lookup(key.lower() if i == 0 else key))  # keys are case-insensitive
        calls += 1
        assert not result.done and result.reward == 0.0
        (obs,) = result.observation
        assert obs["role"] == "tool" and obs["tool_call_id"] == "c1"
        assert obs["content"] == render_record(records, i)
        nxt = obs["content"].split("next: ")[1].split("\n")[0]
        key = nxt if i + 1 < len(records) else None
    assert nxt == END
    final = env.step({"role": "assistant", "content": f"The chain ends.\nAnswer: {records[-1]['value']}"})
    calls += 1
    assert final.done and final.reward == 1.0 and calls == len(records) + 1 >= 16
    assert final.metrics == {
        "accuracy": 1.0,
        "truncated": 0.0,
        "lookups": len(records),
        "chain_progress": 1.0,
    }


def test_garbage_replies_still_run_every_turn_with_a_full_observation() -> None:
    env = _env(max_turns=24, observation_tokens=64)
    tok = _tokenizer()
    for turn in range(1, 25):
        result = env.step(GARBAGE)
        (obs,) = result.observation
        assert obs["role"] == "user" and obs["content"].startswith("No lookup was made.")
        assert len(tok.encode(obs["content"])) >= 64  # the START record again, at full length
        assert result.done == (turn == 24) and result.reward == 0.0
    assert result.metrics == {"accuracy": 0.0, "truncated": 1.0, "lookups": 0.0, "chain_progress": 0.0}


def test_wrong_answers_and_bad_tool_calls_get_an_error_and_the_current_record() -> None:
    env = _env()
    records = env.payload["records"]
    env.step(_lookup(env.payload["start_next"]))
    current = render_record(records, 0)
    wrong = env.step({"role": "assistant", "content": "Answer: 12"})
    assert (
        not wrong.done
        and wrong.observation[0]["content"] == f"That is not the answer. Your current record:\n{current}"
    )
    # the value of an intermediate record is not the answer either
    assert not env.step({"role": "assistant", "content": f"Answer: {records[0]['value']}"}).done
    for reply, error in [
        (_lookup("NOKEY1"), "error: no record has key 'NOKEY1'"),
        (_lookup("x", name="search"), "error: unknown tool 'search'"),
        (_lookup(None, raw="{not json"), "error: arguments must be a JSON object"),
        (_lookup(None, raw='{"id": 3}'), "error: arguments must be a JSON object"),
    ]:
        (obs,) = env.step(reply).observation
        assert obs["role"] == "tool" and obs["content"].startswith(error) and obs["content"].endswith(current)
    # two calls in one reply: two tool messages; looking up START goes back to the start card
    reply = _lookup(START)
    reply["tool_calls"].append({**reply["tool_calls"][0], "id": "c2"})
    assert [o["tool_call_id"] for o in env.step(reply).observation] == ["c1", "c2"]
    assert env.position == -1 and env.lookups == 1 and env.furthest == 0


def test_observations_are_about_observation_tokens_long() -> None:
    tok = _tokenizer()
    for target in (32, 64, 128, 256):
        payload = make_tasks("lookup_chain", 1, 0, 1, {"observation_tokens": target})[0].payload
        lengths = [
            len(tok.encode(render_record(payload["records"], i))) for i in range(len(payload["records"]))
        ]
        assert all(0.8 * target <= n <= 1.2 * target + 4 for n in lengths), (target, lengths)
        assert abs(sum(lengths) / len(lengths) - target) <= 0.1 * target + 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_calls": 1}, "min_calls=1: must be ≥ 2"),
        ({"min_calls": 20, "max_calls": 16}, "max_calls=16: must be ≥ min_calls=20"),
        ({"max_calls": 30}, "max_turns=24: must be ≥ max_calls=30"),
        ({"observation_tokens": 8}, "observation_tokens=8"),
        ({"key_length": 2}, "key_length=2"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"min_call": 16}, "no config fields ['min_call']"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_key(settings, message) -> None:
    from forge.config import validate

    with pytest.raises(ValueError, match=re.escape(message)):
        make_config("lookup_chain", settings)
    cfg = bench_e2e.resolve_config(
        ["env=lookup_chain", "run_dir=unused", *(f"++env.settings.{k}={v}" for k, v in settings.items())]
    )
    with pytest.raises(
        ValueError, match=f"env.settings: .*{re.escape(message)}"
    ):  # what `forge launch` says at start
        validate(cfg)


def test_a_random_model_episode_over_the_gateway(make_gateway, random_engine, random_model_dir) -> None:
    """The same path as calculator: 16 model calls (max_turns) of one session, every prompt the
    previous one + its completion + one ~48-token observation (token-exact, no prefix break)."""
    gw = make_gateway(random_engine, random_model_dir)
    cfg = make_config(
        "lookup_chain",
        {"min_calls": 16, "max_calls": 16, "max_turns": 16, "observation_tokens": 48, "max_tokens": 8},
    )
    (task,) = make_tasks("lookup_chain", 1, 3, 1, cfg)
    body = httpx.post(f"{gw.url}/sessions", json={"task_id": task.id}, timeout=30).json()
    outcome = asyncio.run(run_episode(LookupChain(cfg, task), body["base_url"]))
    assert outcome.calls == 16 and outcome.reward == 0.0 and outcome.metrics["truncated"] == 1.0
    samples = httpx.get(f"{gw.url}/sessions/{body['session_id']}", timeout=30).json()["samples"]
    assert len(samples) == 16 and not any(s["prefix_break"] for s in samples[1:])
    for a, b in zip(samples, samples[1:], strict=False):
        assert (
            b["prompt_ids"][: len(a["prompt_ids"]) + len(a["completion_ids"])]
            == a["prompt_ids"] + a["completion_ids"]
        )
        assert len(b["prompt_ids"]) - len(a["prompt_ids"]) - len(a["completion_ids"]) >= 48


def test_bench_e2e_takes_the_env_and_refuses_the_trl_peer_for_it(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_e2e, "trl_available", lambda: True)
    monkeypatch.setattr(bench_e2e, "run_forge", lambda *a: pytest.fail("must refuse before running"))
    for argv in (["--env", "lookup_chain"], ["--set", "env=lookup_chain"], ["--", "env=lookup_chain"]):
        assert bench_e2e.main(["--peer", "trl", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "env=lookup_chain offers tools ['lookup']" in err, err
    calculator = bench_e2e.resolve_config(["env=calculator", "run_dir=unused"])
    assert bench_e2e.trl_refusal(calculator) is None
    react = bench_e2e.resolve_config(["env=react", "run_dir=unused"])
    assert "black-box" in bench_e2e.trl_refusal(react)


def test_bench_e2e_gives_lookup_chain_its_context_unless_overridden(monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(bench_e2e, "run_forge", lambda overrides, *a: seen.append(overrides) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bench_e2e.main(["--env", "lookup_chain"])
    assert "env=lookup_chain" in seen[-1] and "engine.context_length=4096" in seen[-1]
    with pytest.raises(ZeroDivisionError):
        bench_e2e.main(["--env", "lookup_chain", "--", "engine.context_length=3000"])
    assert "engine.context_length=3000" in seen[-1] and "engine.context_length=4096" not in seen[-1]
    with pytest.raises(ZeroDivisionError):
        bench_e2e.main([])
    assert "env=calculator" in seen[-1] and not any("context_length" in o for o in seen[-1])


@pytest.mark.slow
def test_launch_tiny_model_on_lookup_chain_makes_16_calls_per_episode(tmp_path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "forge.cli", "launch", "model=tiny", "env=lookup_chain"]
    cmd += ["loop.steps=2", "loop.prompts_per_step=2", "loop.group_size=2", "env.eval_prompts=0"]
    cmd += ["logger=none", "logger.console=false", "loop.max_wall_minutes=0", "loop.checkpoint_every=2"]
    cmd += ["engine.context_length=4096", "env.settings.max_tokens=8", "+env.settings.max_turns=16"]
    cmd += ["+env.settings.min_calls=16", "+env.settings.max_calls=16"]
    # only this step's episodes in flight: the default 32 × 16 calls take the 2 cores ~40 s longer
    cmd += ["loop.worker_concurrency=4", "pool.max_in_flight=8"]
    cmd += [f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # every episode ran all 16 calls (16 is also its most), each call one sample trained
        assert r["rollout/episodes"] == 4 and r["rollout/calls_per_episode"] == 16
        assert r["reward/mean"] == 0.0 and r["pool/count_failed"] == 0
        # 64 samples of one growing context per episode: merged trees compute far fewer tokens
        assert r["train/flat_tokens"] > 4 * r["train/tree_tokens"] > 0
    print(f"forge launch env=lookup_chain, 2 steps: {time.monotonic() - started:.1f} s")
